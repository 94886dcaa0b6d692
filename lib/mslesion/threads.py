"""How many torch threads CPU work gets.

On a shared 2-core CPU, registration's many small tensor ops ran ~6x faster with one torch thread than with two
(3.6 s against 22.9 s with other processes busy): each parallel region waits for a thread the OS has parked. The
U-Net's large convolutions gain little from two threads there either, but do when the cores are free, so only
small-op stages are pinned to ``SMALL_OP_THREADS`` (``MSAPP_SMALL_OP_THREADS``, default 1; 0 leaves torch's own).
"""

from __future__ import annotations

import contextlib
import os

import torch


def small_op_threads() -> int:
    try:
        return max(0, int(os.environ.get("MSAPP_SMALL_OP_THREADS", "1")))
    except ValueError:
        return 1


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
