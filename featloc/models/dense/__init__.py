"""Detector-free (dense) matchers: SAM-Net (methods.md 3) and CoAM (methods.md 4).

Both take an image pair and return matched points, coarse-to-fine:

    backbone (shared CNN, 1/2 fine map + 1/8 coarse features)
      -> SAM-Net: hierarchical global/local attention      | CoAM: co-attention at 1/16, 1/32
                                                           |       + decoder to 1/8
      -> coarse matches on the 1/8 grid:
         SAM-Net: dual-softmax, mutual NN, confidence > t  | CoAM: S = r0 r1 cos, mutual NN,
                                                           |       S > t (distinctiveness r)
      -> fine refinement in 5 x 5 windows of the 1/2 map (expectation of a correlation
         heatmap; SAM-Net aligns image 1's window with a predicted affine first)

Modules: `conf` (DenseNetConf), `blocks` (backbone, encoding, attention block, grid helpers),
`refine` (window aligner, fine refiner), `base` (coarse matching, padding, inference path),
`samnet`, `coam`.

Weights files (`save_dense_net` / `load_dense_net`): `{"net_conf": dict, "state_dict": ...,
"meta": dict}`, written by the `dense` training task's export; training checkpoints of that
task load as well.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..weights import load_blob, load_float_state, save_net
from .base import DenseMatchingNet, dual_softmax, mutual_matches
from .coam import CoAM
from .conf import COARSE_STRIDE, FINE_STRIDE, DenseNetConf
from .samnet import SAMNet

__all__ = ["COARSE_STRIDE", "FINE_STRIDE", "CoAM", "DenseMatchingNet", "DenseNetConf", "SAMNet",
           "build_dense_net", "dual_softmax", "load_dense_net", "mutual_matches",
           "save_dense_net"]


def build_dense_net(conf: DenseNetConf) -> DenseMatchingNet:
    return SAMNet(conf) if conf.arch == "samnet" else CoAM(conf)


def save_dense_net(net: DenseMatchingNet, path: str | Path, dtype: torch.dtype = torch.float32,
                   **meta) -> Path:
    """Write `{"net_conf", "state_dict", "meta"}` atomically (floats cast to `dtype`)."""
    return save_net(net, path, dtype, **meta)


def _from_state(net_conf: dict, state_dict: dict) -> DenseMatchingNet:
    from ...config import make_conf

    return load_float_state(build_dense_net(make_conf(DenseNetConf, net_conf)), state_dict)


def load_dense_net(path: str | Path) -> DenseMatchingNet:
    """A network from an exported weights file or a `dense` training checkpoint, in float32
    and eval mode."""
    path = Path(path)
    obj = load_blob(path)
    if isinstance(obj, dict) and "net_conf" in obj and "state_dict" in obj:
        return _from_state(obj["net_conf"], obj["state_dict"])
    if isinstance(obj, dict) and "model" in obj and obj.get("task") == "dense":
        return _from_state(obj["config"]["model"], obj["model"])
    raise ValueError(f"{path} is neither dense-matcher weights (net_conf, state_dict) nor a "
                     "checkpoint of the `dense` training task")
