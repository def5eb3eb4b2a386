"""Weights files of the project's networks: `{"net_conf", ..., "state_dict", "meta"}`, written
atomically (an interrupted export never leaves a half file) and read back in float32; where
the shipped ones live. Importing this module does not import torch (extractors and matchers
load it lazily)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def shipped_weights(name: str) -> Path:
    """Path of the weights file shipped in the package, `featloc/weights/<name>.pt` (it may not
    exist)."""
    from importlib import resources

    return Path(str(resources.files("featloc").joinpath("weights", f"{name}.pt")))


def is_weights_path(weights: str) -> bool:
    """A file path (a separator, a .pt/.pth suffix, or an existing file), else a shipped name."""
    return ("/" in weights or "\\" in weights or weights.endswith((".pt", ".pth"))
            or Path(weights).is_file())


def weights_file(weights: str) -> Path:
    """The file `weights` names: itself if it is a path, else the shipped `<weights>.pt`."""
    return Path(weights) if is_weights_path(weights) else shipped_weights(weights)


def save_net(net: nn.Module, path: str | Path, dtype: torch.dtype | None = None,
             extra: dict | None = None, **meta) -> Path:
    """Write `net` (floats cast to `dtype`, default float32; its `conf` dataclass as
    `net_conf`, plus `extra` top-level entries) to `path` atomically."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
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


def load_blob(path: str | Path) -> dict:
    """The dict stored in an exported weights file or a trainer checkpoint, on the CPU."""
    import pickle

    import torch

    try:  # weights files hold only tensors and plain values
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # a trainer checkpoint also holds RNG states (numpy objects): trusted, own files only
        return torch.load(path, map_location="cpu", weights_only=False)
