"""Training tasks: name -> module. A task module provides

- `ModelConf`, `DataConf`, `LossConf` (and optionally `ValConf`): frozen dataclasses, the schemas
  of the config sections `model`, `data`, `losses` (`val`);
- `build_model(conf) -> nn.Module` and `build_datasets(conf) -> {"train": Dataset}`;
- `compute_loss(model, batch, conf) -> (loss, metrics: dict[str, float])`: the forward pass runs
  under the trainer's autocast; losses are computed in float32;
- optionally `validate(model, conf) -> dict[str, float]` and
  `export(model, conf, path, info) -> Path` (inference weights + JSON sidecar).

Modules are imported only when used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...config import ConfigError

TASKS = {
    "samfeat": "featloc.train.tasks.samfeat",
    "attention": "featloc.train.tasks.attention",
    "retrieval": "featloc.train.tasks.retrieval",
    "dense": "featloc.train.tasks.dense",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"unknown training task {name!r}; available: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name])
