"""Detector-free pair matchers (`featloc.models.dense`): SAM-Net and CoAM behind one
interface, `DenseMatcher.match(image0, image1) -> (Features, Features, Matches)`.

Registered (kind "dense") as `samnet` and `coam`. Weights are the project's own:
`weights` is the name of a file shipped as `featloc/weights/<name>.pt`, or a path (an
exported `dense.pt` or a training checkpoint `ckpt_*.pt` of the `dense` task); nothing is
downloaded and random weights are never used as if trained. `weights="none"` builds an
untrained network from `arch` and `net` (DenseNetConf overrides) for tests and timing only.

The result has one keypoint per match: `features0.keypoints[k]` matches
`features1.keypoints[k]` (matches0 = 0..K-1), in pixels of the original images, with the
match score as keypoint score and no descriptors ([K, 0]). Images are resized so that the
longer side is at most `resize_max` (the coarse similarity matrix grows with the fourth
power of the side), padded to the network's multiple, and blank regions never match
(`min_texture`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import resize_image, to_rgb, to_uint8
from ..models.dense.conf import COARSE_STRIDE
from ..models.weights import is_weights_path, weights_file
from ..types import Features, Matches

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
# Default coarse thresholds: SAM-Net (ASpanFormer) dual-softmax confidence > 0.2 (methods 3.2);
# CoAM score S = r0 r1 cos > 0.3 (methods 4.5 helper default).
DEFAULT_THRESHOLDS = {"samnet": 0.2, "coam": 0.3}
# Guard against similarity matrices that do not fit in memory (float32, N0 x N1 coarse cells,
# ~0.6 GB); 640 x 480 pairs need 23 M.
MAX_COARSE_PAIRS = 150_000_000


@dataclass(frozen=True)
class DenseMatcherConf:
    # shipped weights name (featloc/weights/<name>.pt), a file path (a name with "/" or
    # ending in .pt: an exported dense.pt or a ckpt_*.pt of the dense task), or "none": an
    # untrained network (tests and timing only)
    weights: str = ""
    arch: str = "samnet"  # samnet | coam; must agree with the weights
    net: dict[str, Any] = field(default_factory=dict)  # weights=none: DenseNetConf overrides
    seed: int = 0  # weights=none: initialisation seed
    resize_max: int = 640  # longer side (px) the network sees; 0: original size
    # coarse threshold; None: the arch default (samnet: dual-softmax confidence 0.2, coam:
    # S = r0 r1 cos 0.3)
    match_threshold: float | None = None
    max_matches: int = 0  # keep the best N matches by score; 0: all
    min_texture: float = 0.01  # cells whose neighbourhood intensity std (0-1) is lower never match
    border_cells: int = 0  # drop coarse cells this close to the border (ASpanFormer outdoor: 2)
    refine: bool = True  # sub-pixel refinement (False: coarse cell centres)
    max_points: int = 4096  # coam: cells per image kept by distinctiveness (methods 4.5)
    device: str = "cpu"  # torch device
    precision: str = "float32"  # float32 | bfloat16 (autocast; geometry stays float32)


def missing_weights_message(name: str, path: Path) -> str:
    return (
        f"dense matcher weights not found: {path} ({name} has no trained weights shipped yet; "
        f"random weights are never used as if trained). Train them with `featloc train "
        f"--config configs/train/{name}.yaml` and pass weights=PATH (CLI: --matcher-conf "
        f"weights=PATH; the run writes <output_dir>/dense.pt), or place the exported file "
        f"at {path}."
    )


def _to_tensor(image: np.ndarray, device):
    import torch

    if not image.flags.writeable or not image.flags.c_contiguous:  # torch wants its own
        image = np.array(image)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    return x.to(device).float().mul_(2.0 / 255).sub_(1.0)


class DenseMatcher:
    """Matches an image pair with a detector-free network (module docstring).

    Args:
        conf: `DenseMatcherConf`.
        net: an already-built network (e.g. in tests); overrides the weights lookup.
    """

    Conf = DenseMatcherConf

    def __init__(self, conf: DenseMatcherConf | None = None, net=None):
        self.conf = conf = conf if conf is not None else self.Conf()
        if conf.precision not in PRECISIONS:
            raise ValueError(f"dense matcher: precision must be one of {PRECISIONS}, got "
                             f"{conf.precision!r}")
        import torch

        from ..models.dense import DenseNetConf, build_dense_net, load_dense_net

        self._torch = torch
        self.weights_file: Path | None = None  # the loaded file (see config.resolved_conf)
        if net is None:
            weights = conf.weights or conf.arch
            if weights == "none":
                from ..config import make_conf

                logger.warning("dense matcher %s: untrained network (weights=none)", conf.arch)
                with torch.random.fork_rng():  # no change to the caller's random stream
                    torch.manual_seed(conf.seed)
                    net = build_dense_net(make_conf(DenseNetConf, {**conf.net,
                                                                   "arch": conf.arch}))
            else:
                path = weights_file(weights)
                if not path.is_file():
                    raise FileNotFoundError(
                        f"dense matcher weights not found: {path}" if is_weights_path(weights)
                        else missing_weights_message(weights, path))
                net = load_dense_net(path)
                self.weights_file = path
        if net.conf.arch != conf.arch:
            raise ValueError(f"dense matcher: the weights are a {net.conf.arch} network, the "
                             f"matcher is configured as {conf.arch} (use the {net.conf.arch} "
                             "matcher)")
        self.device = torch.device(conf.device)
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.threshold = (conf.match_threshold if conf.match_threshold is not None
                          else DEFAULT_THRESHOLDS[conf.arch])

    def _prepare(self, image: np.ndarray):
        """uint8 RGB at the working size, its scale (sx, sy) and the original (w, h)."""
        image = to_rgb(to_uint8(image))
        h, w = image.shape[:2]
        resized, scale = resize_image(image, self.conf.resize_max or None)
        return resized, scale, (w, h)

    def match_points(self, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        """keypoints0, keypoints1 [K, 2] float32 (original pixels), scores [K] float32,
        sorted by descending score; image_size0/1 (w, h)."""
        torch = self._torch
        (a, s0, size0), (b, s1, size1) = self._prepare(image0), self._prepare(image1)
        out = {"image_size0": size0, "image_size1": size1}
        if min(a.shape[:2]) == 0 or min(b.shape[:2]) == 0:
            zeros = np.zeros((0, 2), np.float32)
            return {**out, "keypoints0": zeros, "keypoints1": zeros,
                    "scores": np.zeros(0, np.float32)}
        cells = [-(-s // COARSE_STRIDE) for s in (*a.shape[:2], *b.shape[:2])]
        if cells[0] * cells[1] * cells[2] * cells[3] > MAX_COARSE_PAIRS:
            raise ValueError(f"dense matcher: images of {a.shape[1]}x{a.shape[0]} and "
                             f"{b.shape[1]}x{b.shape[0]} px need a coarse similarity matrix "
                             "too large for memory; lower resize_max")
        c = self.conf
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16,
                                                    enabled=c.precision == "bfloat16"):
            res = self.net.match(_to_tensor(a, self.device), _to_tensor(b, self.device),
                                 self.threshold, c.max_matches, c.min_texture, c.border_cells,
                                 c.refine, c.max_points)
        for i, scale in ((0, s0), (1, s1)):
            points = res[f"keypoints{i}"].cpu().numpy().astype(np.float32)
            out[f"keypoints{i}"] = (points + 0.5) / np.asarray(scale, np.float32) - 0.5
        out["scores"] = res["scores"].float().cpu().numpy()
        return out

    def match(self, image0: np.ndarray, image1: np.ndarray) -> tuple[Features, Features, Matches]:
        """Match two numpy images ((H, W) or (H, W, 3|4), uint8/uint16/float in [0, 1]).

        Returns features0, features1 (one keypoint per match, scores = match scores, no
        descriptors) and Matches with matches0 = 0..K-1.
        """
        out = self.match_points(image0, image1)
        k = len(out["scores"])
        empty = np.zeros((k, 0), np.float32)
        f0 = Features(out["keypoints0"], out["scores"], empty, out["image_size0"])
        f1 = Features(out["keypoints1"], out["scores"], empty, out["image_size1"])
        return f0, f1, Matches(np.arange(k, dtype=np.int32), out["scores"])
