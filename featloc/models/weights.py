"""Weights files of the project's networks: `{"net_conf", ..., "state_dict", "meta"}`, written
atomically (an interrupted export never leaves a half file) and read back in float32."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn


def save_net(net: nn.Module, path: str | Path, dtype: torch.dtype = torch.float32,
             extra: dict | None = None, **meta) -> Path:
    """Write `net` (floats cast to `dtype`, its `conf` dataclass as `net_conf`, plus `extra`
    top-level entries) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
             for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"net_conf": asdict(net.conf), **(extra or {}), "state_dict": state,
                "meta": meta}, tmp)
    os.replace(tmp, path)
    return path


def load_float_state(net: nn.Module, state_dict: dict) -> nn.Module:
    """Load a (possibly half-precision) state dict into `net` as float32; eval mode."""
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in state_dict.items()})
    return net.eval()
