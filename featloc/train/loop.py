"""One optimization step (autocast, float32 losses, gradient clipping, NaN/inf skip) and the
run's logging (CSV + TensorBoard)."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import threading
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import progress
from . import dist
from .data.sampler import EpochSampler

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast for the forward pass; fp32: no autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 on CUDA (bf16 needs none)."""
    enabled = precision == "fp16" and device.type == "cuda"
    if precision == "fp16" and device.type != "cuda":
        logger.warning("fp16 autocast on CPU is slow and unscaled; prefer precision=bf16")
    if precision == "bf16" and device.type == "cpu":
        from ..features.samfeat import native_bfloat16

        if not native_bfloat16(device):
            # measured on a 2-core AVX2 CPU: the attention recipe at 1024 keypoints did not
            # log its first 20 steps in 10 minutes under bf16, against 17-21 s per step in fp32
            logger.warning("this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16 autocast "
                           "is emulated and slower than float32 here; pass train.precision=fp32")
    return torch.amp.GradScaler(device.type, enabled=enabled)


def to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _worker_init(_):
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset, conf) -> DataLoader:
    """One loader for the whole run; `loader.sampler.set_epoch(epoch, start_batch)` selects
    the batches of an epoch (this rank's share under DDP). Workers are spawned, not forked:
    OpenCV's thread pool (used while building the caches) does not survive a fork, and they
    persist across epochs, so they start once."""
    sampler = EpochSampler(len(dataset), conf.train.batch_size, conf.train.seed,
                           rank=dist.rank(), world_size=dist.world_size())
    workers = conf.train.num_workers
    return DataLoader(dataset, batch_size=conf.train.batch_size, sampler=sampler,
                      num_workers=workers, drop_last=True,
                      worker_init_fn=_worker_init if workers else None,
                      multiprocessing_context="spawn" if workers else None,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


class StopRequest:
    """Defers SIGINT/SIGTERM to the next step boundary, so the run stops with a checkpoint of a
    consistent state (parameters, optimizer and step counter all after the same step)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt(f"signal {signum}")
        logger.warning("signal %d: stopping after this step (again to stop at once)", signum)
        self.requested = True

    def should_stop(self) -> bool:
        flag = torch.tensor([float(self.requested)])
        if dist.is_distributed():  # all ranks stop at the same step
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _all_finite(value: torch.Tensor) -> bool:
    finite = torch.isfinite(value.detach()).all().float().cpu()
    if dist.is_distributed():  # every rank must take the same branch, or backward hangs
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item() > 0)


def train_step(model, batch, task, conf, optimizer, scaler, device, step: int) -> dict:
    """Forward, backward and update on one batch. Returns the metrics (floats); a non-finite
    loss or gradient skips the update with a warning and returns {"skipped": 1}."""
    model.train()
    batch = to_device(batch, device)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, conf.train.precision):
        loss, metrics = task.compute_loss(model, batch, conf)
    loss = loss.float()
    if not _all_finite(loss):
        logger.warning("step %d: non-finite loss (%s); update skipped", step, metrics)
        return {"skipped": 1.0}
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    clip = conf.train.grad_clip if conf.train.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.zeros(())
    if not scaler.is_enabled() and not torch.isfinite(grad_norm):
        logger.warning("step %d: non-finite gradient norm; update skipped", step)
        optimizer.zero_grad(set_to_none=True)
        return {"skipped": 1.0}
    scaler.step(optimizer)
    scaler.update()
    return {"loss": float(loss.item()), "grad_norm": float(grad_norm.item()), "skipped": 0.0,
            **metrics}


class Meter:
    """Running means of scalar metrics between two log rows."""

    def __init__(self):
        self.sums, self.counts = defaultdict(float), defaultdict(int)

    def update(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.sums[k] += float(v)
            self.counts[k] += 1

    def pop(self) -> dict:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


class CsvLog:
    """Append rows to a CSV file; the header grows when new keys appear. On resume, rows past
    the resumed step are dropped, so a resumed run's log reads like an uninterrupted one."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.fields: list[str] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                rows = list(reader)
            if resume_step is not None:
                rows = [r for r in rows if int(float(r["step"])) <= resume_step]
            self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        new = [k for k in row if k not in self.fields]
        if new or not self.path.exists():
            rows = []
            if self.path.exists():
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


class RunLog:
    """CSV (`metrics.csv`, `val.csv`) and TensorBoard logs of rank 0; no-ops elsewhere."""

    def __init__(self, directory: Path, tensorboard: bool, resume_step: int | None):
        self.enabled = dist.is_main()
        self.tb = None
        if not self.enabled:
            return
        self.csv = {name: CsvLog(directory / f"{name}.csv", resume_step)
                    for name in ("metrics", "val")}
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(directory / "tensorboard"), purge_step=purge)

    def log(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        self.csv[kind].write({"step": step, **values})
        if self.tb is not None:
            prefix = "train" if kind == "metrics" else "val"
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_bar(total: int, initial: int):
    """tqdm over the optimizer steps (rank 0; off with the CLI's --quiet)."""
    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True,
                disable=not (progress.is_enabled() and dist.is_main()))
