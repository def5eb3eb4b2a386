"""Teachers: training-time targets for SAMFeat-style distillation (methods 1.8, 1.11.3-1.11.5).

One interface yields any subset of three targets for an RGB image:

- `groups` (int32 [H, W], ids >= 1, 0 = no group): semantic groups for the WSC loss;
- `edges` (float32 [H, W] in [0, 1]): the edge map supervising the EAG edge head;
- `embedding` (float16/float32 [C, h, w]): a dense feature map for PSRD relation distillation.
  Without an embedding, PSRD uses the same-group relation of the group map
  (R_T(p, q) = [g_p == g_q]).

Teachers (`build_teacher(kind, **conf)`, confs validated: unknown keys raise):

- `masks`: reads a precomputed cache (`<root>/segments/<stem>.png` 16-bit ids,
  `<root>/edges/<stem>.png` 8-bit, optional `<root>/embeddings/<stem>.npy`); the BSDS500
  annotations in ../shared/data/bsds500 have this layout. `featloc teach` writes it.
- `classical`: regions (Felzenszwalb / SLIC) and their boundaries, no weights, on the fly.
- `sam`: Segment Anything through `transformers` from a local weights folder: encoder
  embedding, automatic-mask groups (finest mask wins) and their edges. Slow: precompute it
  with `featloc teach --teacher sam` and train with `masks`.

Teachers are used only at training time; inference never needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError, make_conf
from .base import (
    TARGET_KEYS,
    Teacher,
    TeacherConf,
    TeacherTargets,
    edges_from_groups,
    masks_to_groups,
)

# name -> "module:Class"; modules are imported when a teacher is built (torch/transformers
# only for sam)
TEACHERS = {
    "masks": "featloc.teachers.masks:MasksTeacher",
    "classical": "featloc.teachers.classical:ClassicalTeacher",
    "sam": "featloc.teachers.sam:SamTeacher",
}


def available_teachers() -> list[str]:
    return sorted(TEACHERS)


def build_teacher(kind: str | Mapping[str, Any], **conf: Any) -> Teacher:
    """The teacher `kind` ("masks", "classical", "sam") with its conf overrides.

    `kind` may also be one mapping holding the name under "kind" and the conf, as in a
    training YAML: `build_teacher({"kind": "masks", "root": "cache/sam"})`.

    Raises:
        ConfigError: for an unknown teacher, unknown conf keys or values of the wrong type.
    """
    if isinstance(kind, Mapping):
        conf = {**kind, **conf}
        if "kind" not in conf:
            raise ConfigError(
                f"teacher conf needs kind: one of {', '.join(available_teachers())}"
            )
        kind = conf.pop("kind")
    if kind not in TEACHERS:
        raise ConfigError(
            f"unknown teacher {kind!r}; available: {', '.join(available_teachers())}"
        )
    module, cls = TEACHERS[kind].split(":")
    teacher_cls = getattr(importlib.import_module(module), cls)
    return teacher_cls(make_conf(teacher_cls.Conf, conf))


__all__ = [
    "TARGET_KEYS",
    "TEACHERS",
    "Teacher",
    "TeacherConf",
    "TeacherTargets",
    "available_teachers",
    "build_teacher",
    "edges_from_groups",
    "masks_to_groups",
]
