"""Learned global descriptors for retrieval (registry kind "global"): `netvlad` and `gem`.

A `featloc.models.retrieval.RetrievalNet` (NetVLAD or GeM pooling, plus a learned projection,
over the dense maps of the project's SAMFeat-lite network) trained by the project's trainer
(`featloc train --config configs/train/netvlad-samfeat-lite.yaml`, task `retrieval`). The
weights file holds the whole network: `weights` is a shipped name (featloc/weights/<name>.pt:
`netvlad-samfeat-lite`, `gem-samfeat-lite`) or a path (an exported `retrieval.pt` or a
training checkpoint).

Images are resized so the longer side is at most `resize_max` (each side then rounded to a
multiple of 16, the network's stride); images of the same prepared size share a forward pass
(`describe_batch`, `batch_size` at a time). Nothing is fitted on the database.

Speed (640x480 image, netvlad 32 x 128 -> 512, 1 thread of the project's 2-core CPU while
other jobs ran, bfloat16): ~7 ms at resize_max 320, ~33 ms at 640 (float32: 11 / 56 ms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io.images import resize_image, to_rgb, to_uint8
from ..models.weights import is_weights_path, weights_file
from .retrieval import GlobalConf, GlobalDescriptor

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class LearnedGlobalConf(GlobalConf):
    # shipped weights name (featloc/weights/<name>.pt) or the path of a weights file
    weights: str = "netvlad-samfeat-lite"
    # longer side (px) before description (only down); 0: as is. 320: about the scale of the
    # training views (224 px crops of 336-640 px images), and 4x faster than 640
    resize_max: int = 320
    device: str = "cpu"  # torch device
    # auto: bfloat16 autocast where the device runs it natively (as SAMFeat), else float32
    precision: str = "auto"
    batch_size: int = 8  # images per forward pass in describe_batch (same prepared size)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.resize_max < 0:
            raise ValueError("batch_size must be >= 1 and resize_max >= 0")


def weights_path(weights: str) -> Path:
    """The file of `weights` (a shipped name or a path); a clear error when it is missing."""
    path = weights_file(weights)
    if path.is_file():
        return path
    if is_weights_path(weights):
        raise FileNotFoundError(f"retrieval weights not found: {path}")
    raise FileNotFoundError(
        f"retrieval weights not found: {path} ({weights} has no trained weights shipped yet). "
        f"Train them with `featloc train --config configs/train/{weights}.yaml` and pass "
        f"weights=PATH (CLI: --global-conf weights=PATH), or place the exported retrieval.pt "
        f"at {path}.")


class LearnedGlobal(GlobalDescriptor):
    """NetVLAD / GeM global descriptor of a trained `RetrievalNet` (module docstring)."""

    Conf = LearnedGlobalConf
    input = "image"

    def __init__(self, conf: LearnedGlobalConf | None = None):
        super().__init__(conf)
        import torch

        from ..features.samfeat import native_bfloat16, round_to_multiple
        from ..models.retrieval import load_retrieval_net
        from ..models.samfeat import prepare_for_inference

        self._torch, self._round = torch, round_to_multiple
        self.weights_file = weights_path(self.conf.weights)  # see config.resolved_conf
        net = load_retrieval_net(self.weights_file)
        self.descriptor_dim = net.descriptor_dim
        self._device = torch.device(self.conf.device)
        precision = self.conf.precision
        if precision == "auto":
            precision = "bfloat16" if native_bfloat16(self._device) else "float32"
        self.precision = precision
        prepare_for_inference(net.backbone, precision, cpu=self._device.type == "cpu",
                              keep_distill=net.conf.feature_map == "distill")
        net.requires_grad_(False)
        self.net = net.eval().to(self._device)
        if self._device.type == "cpu":  # oneDNN convolutions are much faster channels-last
            self.net.to(memory_format=torch.channels_last)
        self._fingerprint = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..batch import file_digest

            self._fingerprint = f"{file_digest(self.weights_file)}-{self.precision}"
        return self._fingerprint

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = to_rgb(to_uint8(image))
        image, _ = resize_image(image, self.conf.resize_max or None)
        h, w = image.shape[:2]
        nh, nw = self._round(h), self._round(w)
        if (nh, nw) != (h, w):
            interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
            image = cv2.resize(image, (nw, nh), interpolation=interp)
        return np.ascontiguousarray(image)

    def describe(self, image: np.ndarray | None = None, features=None) -> np.ndarray:
        return self.describe_batch([image])[0]

    def describe_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """[D] float32 unit vectors of uint8 images (H, W) or (H, W, 3)."""
        torch = self._torch
        prepared = [self._prepare(image) for image in images]
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, array in enumerate(prepared):
            groups.setdefault(array.shape[:2], []).append(i)
        bf16 = self.precision == "bfloat16"
        for indices in groups.values():
            for start in range(0, len(indices), self.conf.batch_size):
                chunk = indices[start:start + self.conf.batch_size]
                x = torch.from_numpy(np.stack([prepared[i] for i in chunk])).permute(0, 3, 1, 2)
                x = x.to(self._device).float().mul_(2.0 / 255).sub_(1.0)  # [-1, 1]
                if self._device.type != "cpu":
                    x = x.contiguous()
                with torch.inference_mode(), torch.autocast(self._device.type, torch.bfloat16,
                                                            enabled=bf16):
                    vectors = self.net(x)["global_descriptor"].float().cpu().numpy()
                for i, v in zip(chunk, vectors, strict=True):
                    out[i] = np.ascontiguousarray(v, np.float32)
        return out
