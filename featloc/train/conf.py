"""The training config: a YAML file plus `key=value` overrides, validated against dataclasses.

Sections: `task` (name in `featloc.train.tasks`), `model`, `data`, `losses` (and `val` if the
task declares it), whose schemas come from the task module (`ModelConf`, `DataConf`, `LossConf`,
`ValConf`), and `optim` (`OptimConf`) and `train` (`TrainConf`), shared by every task. Unknown
keys and values of the wrong type are errors naming the full key (e.g. `data.homography.foo`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError
from .optim import OptimConf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConf:
    steps: int = 0  # optimizer steps in total; 0: epochs x batches per epoch
    epochs: int = 0  # used when steps = 0
    batch_size: int = 8  # pairs per step and per process
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)
    seed: int = 0  # model init, data order and every per-item random stream
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 (autocast) | fp16 (autocast + GradScaler, CUDA) | fp32
    grad_clip: float = 0.0  # max global gradient norm; 0: no clipping
    log_interval: int = 10  # steps between log rows (averaged over the interval)
    ckpt_interval: int = 500  # steps between checkpoints (and one at the end)
    val_interval: int = 0  # steps between validations; 0: only at the end (if the task has one)
    keep_last_k: int = 3  # checkpoints kept; 0: all
    output_dir: str = "outputs/train/run"  # checkpoints, logs, config, exported weights
    export_dtype: str = "fp16"  # dtype of the exported inference weights: fp16 | fp32
    tensorboard: bool = True  # also log to <output_dir>/tensorboard
    threads: int = 0  # torch CPU threads; 0: torch's default (1 helps on a busy shared CPU)
    ddp_find_unused: bool = False  # DDP: set true if a loss weight of 0 leaves a head unused
    # Fine-tuning: start a new run (fresh optimizer, schedule and step count) from the model
    # parameters of a checkpoint file or of a run folder's newest checkpoint.
    init_from: str = ""

    def __post_init__(self):
        checks = {"device": ("auto", "cpu", "cuda"), "precision": ("bf16", "fp16", "fp32"),
                  "export_dtype": ("fp16", "fp32")}
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"train.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key in ("batch_size", "log_interval", "ckpt_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")


def _schema(task_module) -> type:
    fields = [("task", str, field(default="")), ("model", task_module.ModelConf, field(
        default_factory=task_module.ModelConf)), ("data", task_module.DataConf, field(
        default_factory=task_module.DataConf)), ("losses", task_module.LossConf, field(
        default_factory=task_module.LossConf))]
    if hasattr(task_module, "ValConf"):
        fields.append(("val", task_module.ValConf, field(default_factory=task_module.ValConf)))
    fields += [("optim", OptimConf, field(default_factory=OptimConf)),
               ("train", TrainConf, field(default_factory=TrainConf))]
    return dataclasses.make_dataclass("Config", fields, frozen=True)


def _merge(base, update, where: str):
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid config key or value '{key}': {msg}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Resolved, validated config object (a frozen dataclass tree)."""
    from .tasks import get_task

    raw = OmegaConf.load(path) if path else OmegaConf.create({})
    cli = OmegaConf.from_dotlist(list(overrides or []))
    task = cli.get("task") or raw.get("task")
    if not task:
        raise ConfigError(f"{path}: missing 'task' (one of the registered training tasks)")
    conf = OmegaConf.structured(_schema(get_task(task)))
    conf = _merge(conf, raw, str(path))
    conf = _merge(conf, cli, "overrides")
    try:
        out = OmegaConf.to_object(conf)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if out.train.steps <= 0 and out.train.epochs <= 0:
        raise ConfigError(f"{path}: set train.steps or train.epochs")
    return out


def to_dict(conf) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(conf), resolve=True)


def to_yaml(conf) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(conf))


def warn_config_changes(old: dict, new: dict, prefix: str = "") -> None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            warn_config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            logger.warning("config changed since the checkpoint: %s%s: %r -> %r",
                           prefix, key, a, b)
