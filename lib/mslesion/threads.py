"""How many torch threads CPU work gets.

On the shared 2-core CPU (load average 4-7 from other jobs), torch's default of one thread per core made every
stage slower: registration ran ~6x faster with one thread than with two (3.6 s against 22.9 s), the U-Net window
1.6x (2.3 s against 3.7 s), and the whole server with OMP_NUM_THREADS=1 answered flair_lesion in 1.5 s against
4.4-5.4 s (bench.latency, docs/performance.md): each parallel region waits for a thread the OS has parked.

So the server uses ``cpu_threads()`` torch threads: ``MSAPP_CPU_THREADS`` if set (0 leaves torch's default), else
half the cores, at least one (1 on 2 cores). Stages of many small ops (registration) run with
``MSAPP_SMALL_OP_THREADS`` (default 1) whatever the server's count. Neither touches work on a GPU.
"""

from __future__ import annotations

import contextlib
import os

import torch


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, str(default))))
    except ValueError:
        return default


def cpu_threads() -> int:
    """The server's torch thread count (0: torch's default)."""
    return _env_int("MSAPP_CPU_THREADS", max(1, (os.cpu_count() or 2) // 2))


_applied = False


def apply_cpu_thread_policy() -> None:
    """Sets the process's torch thread count once (the server, and the training subprocess it starts)."""
    global _applied
    if _applied:
        return
    _applied = True
    threads = cpu_threads()
    if threads > 0:
        torch.set_num_threads(threads)


def small_op_threads() -> int:
    return _env_int("MSAPP_SMALL_OP_THREADS", 1)


@contextlib.contextmanager
def torch_threads(threads: int):
    """Runs the block with ``threads`` intra-op threads (process-wide while it runs), then restores the count."""
    before = torch.get_num_threads()
    if threads <= 0 or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
