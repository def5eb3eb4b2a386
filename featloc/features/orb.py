"""ORB (OpenCV): FAST keypoints with rotated BRIEF binary descriptors."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..types import Features
from .base import Extractor, ExtractorConf


@dataclass(frozen=True)
class ORBConf(ExtractorConf):
    scale_factor: float = 1.2  # OpenCV default pyramid ratio
    n_levels: int = 8  # OpenCV default
    fast_threshold: int = 20  # OpenCV default
    edge_threshold: int = 31  # OpenCV default (border without keypoints, px)


class ORB(Extractor):
    """ORB. Descriptors are the 256 bits unpacked to {0, 1} float32, so the squared L2
    distance between two descriptors is their Hamming distance (matched by the `nn` matcher)."""

    Conf = ORBConf
    descriptor_dim = 256

    def __init__(self, conf: ORBConf | None = None):
        super().__init__(conf)
        n = self.conf.max_num_keypoints if self.conf.max_num_keypoints > 0 else 100000
        self._orb = cv2.ORB_create(
            nfeatures=n,
            scaleFactor=self.conf.scale_factor,
            nlevels=self.conf.n_levels,
            edgeThreshold=self.conf.edge_threshold,
            patchSize=self.conf.edge_threshold,
            fastThreshold=self.conf.fast_threshold,
        )

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        keypoints, desc = self._orb.detectAndCompute(image, None)
        if not keypoints or desc is None:
            return Features.empty((w, h), self.descriptor_dim)
        xy = np.array([kp.pt for kp in keypoints], np.float32)
        scores = np.array([kp.response for kp in keypoints], np.float32)
        scales = np.array([kp.size for kp in keypoints], np.float32)
        oris = np.deg2rad(np.array([kp.angle for kp in keypoints], np.float32))
        bits = np.unpackbits(desc, axis=1).astype(np.float32)
        return self._top_k(Features(xy, scores, bits, (w, h), scales, oris))
