"""The extractor interface shared by classical and learned local features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.images import resize_image, scale_keypoints, to_gray, to_rgb, to_uint8
from ..types import Features


@dataclass(frozen=True)
class ExtractorConf:
    max_num_keypoints: int = 2048  # keep the best N by score; <= 0 keeps all
    resize_max: int = 0  # resize so the longer side is at most this (px); 0: original size
    grayscale: bool = True  # feed the model a gray image (colour input is converted)


class Extractor:
    """Detects and describes local features in one image.

    Subclasses set `Conf` (a frozen dataclass extending `ExtractorConf`), `descriptor_dim`,
    and implement `_extract(image) -> Features` on the (possibly resized) uint8 image, gray
    (H, W) if `conf.grayscale` else RGB (H, W, 3). Keypoints come back in original pixels.
    """

    Conf = ExtractorConf
    descriptor_dim: int = 0

    def __init__(self, conf: ExtractorConf | None = None):
        self.conf = conf if conf is not None else self.Conf()

    def extract(self, image: np.ndarray) -> Features:
        """Features of a numpy image: (H, W) or (H, W, 3|4), uint8/uint16/float in [0, 1]."""
        image = to_uint8(image)
        h, w = image.shape[:2]
        image = to_gray(image) if self.conf.grayscale else to_rgb(image)
        resized, scale = resize_image(image, self.conf.resize_max or None)
        features = self._extract(resized)
        features.keypoints = scale_keypoints(features.keypoints, scale)
        if features.scales is not None and scale != (1.0, 1.0):
            features.scales = (features.scales / np.mean(scale)).astype(np.float32)
        features.image_size = (w, h)
        return features

    def extract_batch(self, images: list[np.ndarray]) -> list[Features]:
        """Features of several images; learned extractors override this to batch."""
        return [self.extract(image) for image in images]

    def _extract(self, image: np.ndarray) -> Features:
        raise NotImplementedError

    def _top_k(self, features: Features) -> Features:
        k = self.conf.max_num_keypoints
        if k <= 0 or len(features) <= k:
            return features
        order = np.argsort(-features.keypoint_scores, kind="stable")[:k]
        return features.select(np.sort(order))
