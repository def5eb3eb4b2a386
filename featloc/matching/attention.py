"""The attentional matcher (`featloc.models.attention`, LightGlue-style with SuperGlue options)
behind the `Matcher` interface.

Registered as `attention` (the `attention-sift` weights unless `weights` is given),
`attention-sift` and `attention-samfeat-lite`. Weights are the project's own: `weights` is the
name of a file shipped as `featloc/weights/<name>.pt`, or a path (an exported `attention.pt` or
a training checkpoint `ckpt_*.pt`); nothing is downloaded and random weights are never used as
if trained.

Inference options (LightGlue defaults): `filter_threshold` 0.1, adaptive depth
`depth_confidence` 0.95, point pruning `width_confidence` 0.99 for images with more than
`prune_min_keypoints` points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.weights import is_weights_path, shipped_weights
from ..types import Features, Matches
from .base import Matcher, MatcherConf

PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class AttentionConf(MatcherConf):
    # shipped weights name (featloc/weights/<name>.pt) or a file path (a name with "/" or
    # ending in .pt): an exported <run>/attention.pt or a ckpt_*.pt of the attention task
    weights: str = "attention-sift"
    filter_threshold: float = 0.1  # keep mutual matches with probability > this (SG: 0.2)
    depth_confidence: float = 0.95  # adaptive depth: stop when this share is confident; -1: off
    width_confidence: float = 0.99  # prune points with matchability <= 1 - this; -1: off
    # prune only while an image has more points than this (LightGlue: 1024 on CUDA, 1536 with
    # flash attention, never on CPU; untested on CPU with a fully trained model)
    prune_min_keypoints: int = 1024
    sinkhorn_iterations: int = 0  # sinkhorn models: iterations at inference; 0: the model's
    device: str = "cpu"  # torch device
    precision: str = "float32"  # float32 | bfloat16 (autocast; assignment stays float32)


def missing_weights_message(name: str, path: Path) -> str:
    return (
        f"attention matcher weights not found: {path} ({name} has no trained weights shipped "
        f"yet; random weights are never used as if trained). Train them with `featloc train "
        f"--config configs/train/{name}.yaml` and pass weights=PATH (CLI: --matcher-conf "
        f"weights=PATH; the run writes <output_dir>/attention.pt), or place the exported file "
        f"at {path}."
    )


class AttentionMatcher(Matcher):
    """Learned attentional matching of two `Features` (methods.md 2).

    Args:
        conf: `AttentionConf`.
        net: an already-built `AttentionMatcherNet` (e.g. random-init in tests); overrides
            the weights lookup.
    """

    Conf = AttentionConf

    def __init__(self, conf: AttentionConf | None = None, net=None):
        super().__init__(conf)
        conf = self.conf
        if conf.precision not in PRECISIONS:
            raise ValueError(f"attention: precision must be one of {PRECISIONS}, got "
                             f"{conf.precision!r}")
        import torch

        from ..models.attention import load_attention_net

        self._torch = torch
        self.weights_file: Path | None = None  # the loaded file (see config.resolved_conf)
        if net is None:
            if is_weights_path(conf.weights):
                path = Path(conf.weights)
                if not path.is_file():
                    raise FileNotFoundError(f"attention matcher weights not found: {path}")
            else:
                path = shipped_weights(conf.weights)
                if not path.is_file():
                    raise FileNotFoundError(missing_weights_message(conf.weights, path))
            net = load_attention_net(path)
            self.weights_file = path
        # the extractor the weights were trained on (None: unknown); see match.run_match
        self.trained_features: str | None = getattr(net, "trained_features", None)
        self.device = torch.device(conf.device)
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def _tensors(self, features: Features, i: int) -> dict:
        torch = self._torch

        def t(array):
            return torch.from_numpy(np.ascontiguousarray(array, np.float32))[None].to(self.device)

        out = {f"keypoints{i}": t(features.keypoints),
               f"descriptors{i}": t(features.descriptors),
               f"keypoint_scores{i}": t(features.keypoint_scores),
               f"image_size{i}": t(np.asarray(features.image_size, np.float32))}
        if features.scales is not None:
            out[f"scales{i}"] = t(features.scales)
        if features.oris is not None:
            out[f"oris{i}"] = t(features.oris)
        return out

    def match_tensors(self, features0: Features, features1: Features) -> dict:
        """The network's full inference output (also `stop`, `prune0/1`), as tensors."""
        expected = self.net.conf.input_dim
        for f in (features0, features1):
            if f.descriptor_dim != expected:
                raise ValueError(f"attention matcher: the model takes {expected}-d descriptors, "
                                 f"the features have {f.descriptor_dim}-d ones (weights for "
                                 "another extractor?)")
        torch = self._torch
        data = {**self._tensors(features0, 0), **self._tensors(features1, 1)}
        c = self.conf
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16,
                                                    enabled=c.precision == "bfloat16"):
            return self.net.match(data, c.filter_threshold, c.depth_confidence,
                                  c.width_confidence, c.prune_min_keypoints,
                                  c.sinkhorn_iterations or None)

    def _match(self, features0: Features, features1: Features) -> Matches:
        out = self.match_tensors(features0, features1)
        return Matches(out["matches0"].cpu().numpy(),
                       out["matching_scores0"].float().cpu().numpy())
