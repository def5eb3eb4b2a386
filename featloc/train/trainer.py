"""The one trainer of featloc: `train(config, overrides)` for every task (see `tasks/`).

Single process by default; DistributedDataParallel when launched by torchrun (CPU: gloo, CUDA:
nccl), with only rank 0 logging, validating, checkpointing and exporting. A run lives in
`train.output_dir`: `config.yaml`, `ckpt_<step>.pt`, `metrics.csv`, `val.csv`, `tensorboard/`
and the exported weights. `resume=True` continues exactly from the newest checkpoint (the same
parameters as an uninterrupted run). Ctrl-C / SIGTERM stops at the end of the current step with
a checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from . import checkpoint, dist
from .conf import load_config, to_dict, to_yaml, warn_config_changes
from .data.sampler import EpochSampler
from .loop import (
    Meter,
    RunLog,
    StopRequest,
    make_loader,
    make_scaler,
    progress_bar,
    resolve_device,
    train_step,
)
from .optim import build_optimizer, build_scheduler
from .tasks import get_task

logger = logging.getLogger(__name__)


def train(config_path: str | Path | None, overrides: list[str] | None = None,
          resume: bool = False, export_only: bool = False) -> Path:
    """Train (or resume, or only export) the run described by the config; returns the output
    folder. With train.num_workers > 0 the loader spawns processes: call this from a script
    under `if __name__ == "__main__":`."""
    conf = load_config(config_path, overrides)
    task, out = get_task(conf.task), Path(conf.train.output_dir)
    device = resolve_device(conf.train.device)
    if conf.train.threads > 0:
        torch.set_num_threads(conf.train.threads)
    dist.init(device.type)
    checkpoint.seed_everything(conf.train.seed)
    model = task.build_model(conf).to(device)
    found = checkpoint.load_latest(out, device) if (resume or export_only) else None
    if (resume or export_only) and found is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {out}")
    if not (resume or export_only) and checkpoint.checkpoints(out):
        raise FileExistsError(f"{out} already holds checkpoints: pass --resume to continue the "
                              "run, or choose another train.output_dir")
    ckpt = found[0] if found else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if dist.is_main():
            warn_config_changes(ckpt["config"], to_dict(conf))
        logger.info("loaded %s (step %d)", found[1], ckpt["step"])
    elif conf.train.init_from:
        state, path = checkpoint.load_model_state(conf.train.init_from, device)
        try:
            # parts the checkpoint lacks (a head added for this run) keep their fresh
            # initialisation; anything else that does not fit is an error
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected:
                raise RuntimeError(f"unexpected keys {unexpected}")
            if len(missing) == len(model.state_dict()):
                raise RuntimeError("it holds none of this model's parameters")
        except RuntimeError as exc:
            raise ValueError(f"train.init_from: {path} does not fit this model (is model.* the "
                             f"same as in its run?): {exc}") from exc
        if missing:
            logger.warning("train.init_from: %d parameters not in %s keep their initialisation: "
                           "%s", len(missing), path, ", ".join(missing))
        logger.info("initialised the model from %s", path)
    if export_only:
        return _export(task, model, conf, out, ckpt["step"], ckpt.get("commit", "unknown"))

    with dist.main_first():  # rank 0 builds the caches, the others reuse them
        dataset = task.build_datasets(conf)["train"]
    per_epoch = EpochSampler.batches_per_epoch(len(dataset), conf.train.batch_size,
                                               dist.world_size())
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} training items are fewer than one batch of "
                         f"{conf.train.batch_size} x {dist.world_size()} processes")
    total = conf.train.steps or conf.train.epochs * per_epoch
    optimizer = build_optimizer(model, conf.optim)
    scheduler = build_scheduler(optimizer, conf.optim, total, per_epoch)
    scaler = make_scaler(device, conf.train.precision)
    step, epoch, batch_in_epoch = 0, 0, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        rngs = ckpt["rng"]
        checkpoint.set_rng_state(rngs[dist.rank()] if len(rngs) == dist.world_size() else rngs[0])
    if dist.is_distributed():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=conf.train.ddp_find_unused)
    commit = checkpoint.git_commit()
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(conf))
    log = RunLog(out, conf.train.tensorboard, step if ckpt is not None else None)

    def save() -> None:
        rngs = dist.all_gather_object(checkpoint.rng_state())
        if dist.is_main():
            checkpoint.save(out, {
                "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": rngs,
                "config": to_dict(conf), "commit": commit, "task": conf.task,
                "world_size": dist.world_size()}, conf.train.keep_last_k)

    meter, bar, tic, logged = Meter(), progress_bar(total, step), time.perf_counter(), step
    loader = make_loader(dataset, conf)
    with StopRequest() as stop, bar:
        while step < total:
            loader.sampler.set_epoch(epoch, batch_in_epoch)
            for batch in loader:
                meter.update(train_step(model, batch, task, conf, optimizer, scaler, device, step))
                scheduler.step()
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                bar.update(1)
                if step % conf.train.log_interval == 0 or step == total:
                    row = {k: dist.all_reduce_mean(v) for k, v in meter.pop().items()}
                    row.update({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                "sec_per_step": (time.perf_counter() - tic) / (step - logged)})
                    tic, logged = time.perf_counter(), step
                    log.log("metrics", step, row)
                    bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
                if conf.train.val_interval and step % conf.train.val_interval == 0:
                    _validate(task, model, conf, log, step)
                stopping = stop.should_stop()
                if step % conf.train.ckpt_interval == 0 or step == total or stopping:
                    save()
                if stopping:
                    log.close()
                    raise KeyboardInterrupt(f"stopped at step {step}; checkpoint saved")
                if step >= total:
                    break
            else:
                epoch, batch_in_epoch = epoch + 1, 0
    if not conf.train.val_interval or step % conf.train.val_interval:
        _validate(task, model, conf, log, step)
    log.close()
    if dist.is_main():
        _export(task, _unwrap(model), conf, out, step, commit)
    dist.barrier()
    return out


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _validate(task, model, conf, log: RunLog, step: int) -> None:
    if hasattr(task, "validate") and dist.is_main():
        values = task.validate(_unwrap(model), conf)
        if values:
            log.log("val", step, values)
            logger.info("step %d validation: %s", step,
                        ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    dist.barrier()


def _export(task, model, conf, out: Path, step: int, commit: str) -> Path:
    if hasattr(task, "export"):
        path = task.export(model, conf, out / f"{conf.task}.pt",
                           {"step": step, "commit": commit, "config": to_dict(conf)})
        logger.info("exported inference weights to %s", path)
    return out
