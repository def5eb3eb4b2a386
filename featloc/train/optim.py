"""Optimizer and learning-rate schedule (per optimizer step)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class OptimConf:
    name: str = "adam"  # adam (weight decay = coupled L2, as SAMFeat) | adamw (decoupled)
    lr: float = 1e-3  # base learning rate (SAMFeat: 1e-3)
    weight_decay: float = 1e-4  # SAMFeat: 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # constant | linear | cosine: per step, from 1 at decay_start to final_lr_factor at the end;
    # samfeat: per epoch, factor(e) = 1 - e / (E + 1) with E epochs in total (SAMFeat LambdaLR)
    schedule: str = "constant"
    decay_start: float = 0.0  # linear/cosine: fraction of the run before the decay begins
    final_lr_factor: float = 0.0  # linear/cosine: factor reached at the last step
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps (multiplies the above)

    def __post_init__(self):
        if self.name not in ("adam", "adamw"):
            raise ValueError(f"optim.name must be adam or adamw, got {self.name!r}")
        if self.schedule not in ("constant", "linear", "cosine", "samfeat"):
            raise ValueError(f"optim.schedule must be constant|linear|cosine|samfeat, got "
                             f"{self.schedule!r}")
        if len(self.betas) != 2:
            raise ValueError("optim.betas needs two values")


def lr_factor(step: int, conf: OptimConf, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    factor = 1.0
    if conf.schedule == "samfeat":
        epochs = max(1, math.ceil(total_steps / max(1, steps_per_epoch)))
        factor = 1.0 - (step // max(1, steps_per_epoch)) / (epochs + 1)
    elif conf.schedule in ("linear", "cosine"):
        start = conf.decay_start * total_steps
        t = min(1.0, max(0.0, (step - start) / max(1.0, total_steps - start)))
        shape = t if conf.schedule == "linear" else 0.5 * (1 - math.cos(math.pi * t))
        factor = 1.0 - (1.0 - conf.final_lr_factor) * shape
    if conf.warmup_steps > 0:
        factor *= min(1.0, (step + 1) / conf.warmup_steps)
    return factor


def build_optimizer(model: torch.nn.Module, conf: OptimConf) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adam if conf.name == "adam" else torch.optim.AdamW
    return cls(params, lr=conf.lr, betas=tuple(conf.betas), eps=conf.eps,
               weight_decay=conf.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, conf: OptimConf, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, conf, total_steps, steps_per_epoch))
