"""SIFT (OpenCV) with an optional RootSIFT descriptor."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..types import Features
from .base import Extractor, ExtractorConf


@dataclass(frozen=True)
class SIFTConf(ExtractorConf):
    rootsift: bool = False  # L1-normalise then square-root (Arandjelovic & Zisserman 2012)
    contrast_threshold: float = 0.04  # OpenCV default; lower finds more, weaker keypoints
    edge_threshold: float = 10.0  # OpenCV default
    sigma: float = 1.6  # OpenCV default
    n_octave_layers: int = 3  # OpenCV default


class SIFT(Extractor):
    """Difference-of-Gaussians keypoints with SIFT descriptors (128-d, L2-normalised)."""

    Conf = SIFTConf
    descriptor_dim = 128

    def __init__(self, conf: SIFTConf | None = None):
        super().__init__(conf)
        # OpenCV's nfeatures keeps the strongest responses, which is our max_num_keypoints,
        # but it counts duplicates (one keypoint per orientation) too; we cap after dedup.
        self._sift = cv2.SIFT_create(
            nfeatures=0,
            nOctaveLayers=self.conf.n_octave_layers,
            contrastThreshold=self.conf.contrast_threshold,
            edgeThreshold=self.conf.edge_threshold,
            sigma=self.conf.sigma,
        )

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        keypoints, desc = self._sift.detectAndCompute(image, None)
        if not keypoints:
            return Features.empty((w, h), self.descriptor_dim)
        xy = np.array([kp.pt for kp in keypoints], np.float32)
        # OpenCV's keypoint coordinates put the centre of the top-left pixel at (0, 0),
        # which is the project convention: no shift needed.
        scores = np.array([kp.response for kp in keypoints], np.float32)
        scales = np.array([kp.size for kp in keypoints], np.float32)
        oris = np.deg2rad(np.array([kp.angle for kp in keypoints], np.float32))
        desc = desc.astype(np.float32)
        if self.conf.rootsift:
            desc /= np.maximum(np.abs(desc).sum(1, keepdims=True), 1e-8)
            desc = np.sqrt(desc)
        else:
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-8)
        features = Features(xy, scores, desc, (w, h), scales, oris)
        return self._top_k(features)
