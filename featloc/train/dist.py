"""torch.distributed helpers: a no-op in single-process runs, DDP when launched by torchrun."""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> None:
    """Join the process group set up by torchrun (env RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    if launched_by_torchrun() and not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        # long timeout: the other ranks wait while rank 0 builds the data caches
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=3))
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds a cache); the others run it afterwards and
    find the work done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()
