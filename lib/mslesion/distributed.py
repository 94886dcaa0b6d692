"""torch.distributed for training: one process per GPU, on one node or several.

Two ways in, one convention (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT):

- ``torchrun --nproc_per_node=N [--nnodes=M --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT] -m mslesion.pretrain ...``
  sets the environment itself; the program calls :func:`init_from_env`.
- The server's trainer runs in one process; on a ``{"multi_gpu": true}`` request it calls :func:`spawn`, which
  starts N processes on this node with that environment (a free loopback port) and returns rank 0's result.

NCCL on CUDA (rank r of a node drives ``cuda:<LOCAL_RANK>``), gloo on the CPU (what the tests run).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = timedelta(minutes=30)  # a collective that waits longer than this means a rank died or hung


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among all processes, its rank on this node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size} (local {self.local_rank}, {self.device})"


_current: World | None = None


def current() -> World:
    """This process's World as :func:`init_from_env` set it up; before that, a lone process on the GPU if there is
    one."""
    return _current or World(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the one process that publishes weights and writes files (rank 0, or the only process)."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(local_rank: int, use_cuda: bool | None = None) -> torch.device:
    """``cuda:<local_rank>`` (made the current device, so NCCL and autocast use it) or the CPU."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda and torch.cuda.is_available()
    if not use_cuda:
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}); "
            "start at most that many processes per node"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init_from_env(use_cuda: bool | None = None) -> World:
    """Joins the process group torchrun (or :func:`spawn`) described in the environment; a lone process
    (no WORLD_SIZE, or 1) gets a World of one and no process group."""
    global _current
    size = int(os.environ.get("WORLD_SIZE", "1"))
    global_rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(global_rank)))
    device = device_for(local_rank, use_cuda)
    if size > 1 and not active():
        dist.init_process_group(
            backend=backend_for(device), init_method="env://", rank=global_rank, world_size=size, timeout=TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
    _current = World(global_rank, size, local_rank, device)
    if size > 1:
        logger.info("joined the process group: %s, backend %s", _current.describe(), backend_for(device))
    return _current


def teardown() -> None:
    global _current
    _current = None
    if active():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requested_world_size(request: dict, device: torch.device) -> int:
    """How many processes a training request asks for, MONAI Label's way: ``multi_gpu`` true trains on every
    visible GPU (the server narrows them with ``gpus``, e.g. "0,1", through CUDA_VISIBLE_DEVICES); an explicit
    ``world_size`` sets the count, which is what allows several CPU processes (gloo) for tests. One GPU, or none
    and no ``world_size``, means a single process."""
    flag = request.get("multi_gpu", False)
    if not (flag is True or str(flag).lower() in ("true", "1", "yes")):
        return 1
    explicit = request.get("world_size")
    if device.type == "cuda" and torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if explicit and int(explicit) > visible:
            raise ValueError(f"world_size {explicit} asks for more processes than the {visible} visible GPU(s)")
        return int(explicit) if explicit else visible
    return max(1, int(explicit)) if explicit else 1


def rank_logging(rank_: int, size: int) -> None:
    """INFO logs of this process, each line naming its rank (the ranks of a node share one console)."""
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"[%(asctime)s][rank {rank_}/{size}][%(levelname)s](%(name)s) %(message)s")


def _run_rank(local_rank: int, fn: Callable, size: int, port: int, result_dir: str, use_cuda: bool,
              args: tuple) -> None:
    """Body of each spawned process: torchrun's environment, the process group, ``fn``; rank 0 keeps the result."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(size),
                      LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rank_logging(local_rank, size)
    if not use_cuda:  # N CPU processes share the cores instead of each starting one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    init_from_env(use_cuda)
    try:
        result = fn(*args)
        if local_rank == 0:
            with open(Path(result_dir) / "result.pkl", "wb") as out:
                pickle.dump(result, out)
    finally:
        teardown()


def spawn(fn: Callable, size: int, *args: Any, use_cuda: bool | None = None) -> Any:
    """Runs ``fn(*args)`` in ``size`` fresh processes on this node (one per GPU, or gloo on the CPU) and returns what
    rank 0 returned. ``fn`` and ``args`` must pickle (a module-level function). If one rank fails, the others are
    stopped and the error is raised here."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    port = free_port()
    logger.info("starting %d training processes (%s) on 127.0.0.1:%d", size, "nccl" if use_cuda else "gloo", port)
    with tempfile.TemporaryDirectory(prefix="msapp-ranks-") as result_dir:
        torch.multiprocessing.start_processes(
            _run_rank, args=(fn, size, port, result_dir, use_cuda, args), nprocs=size, join=True, start_method="spawn"
        )
        result = Path(result_dir) / "result.pkl"
        if not result.exists():
            return None
        with open(result, "rb") as handle:
            return pickle.load(handle)


def shard(items: list, rank_: int, size: int) -> list:
    """This rank's share of ``items``, every rank getting the same count (the list is wrapped around to a multiple
    of ``size``), so that all ranks run the same number of steps and none waits forever in a collective."""
    if size <= 1 or not items:
        return list(items)
    per_rank = -(-len(items) // size)
    return [items[i % len(items)] for i in range(rank_, per_rank * size, size)]


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def reduce(value: float, op: str, device: torch.device) -> float:
    """``value`` summed (``op`` "sum"), or its maximum or minimum, over all ranks; unchanged in a lone process.
    ``device`` is this rank's (NCCL reduces CUDA tensors only)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, _OPS[op]))
    return float(t.item())


def gather(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a lone process)."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank: one decision taken once, so no rank can take a different branch."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
