"""Typed data passed between the stages of featloc.

Conventions (project-wide, see README "Conventions"):
- Keypoints are (x, y) in pixels of the *original* image (after EXIF orientation), with the
  centre of the top-left pixel at (0, 0). Only `featloc.io.colmap` shifts by +0.5.
- `matches0[i] = j` means keypoint i of image 0 matches keypoint j of image 1; -1 is unmatched.
  Training labels also use -2 (ignore).
- Image sizes are (width, height).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNMATCHED = -1
IGNORE = -2


def _as(array, dtype, shape_rank: int, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=dtype)
    if array.ndim != shape_rank:
        raise ValueError(f"{name} must have {shape_rank} dimensions, got shape {array.shape}")
    return array


@dataclass
class Features:
    """Local features of one image.

    Attributes:
        keypoints: [N, 2] float32, (x, y) pixels of the original image.
        keypoint_scores: [N] float32, detection scores (higher is better).
        descriptors: [N, D] float32.
        image_size: (w, h) of the original image.
        scales: optional [N] float32, keypoint scale in pixels (e.g. SIFT size).
        oris: optional [N] float32, keypoint orientation in radians.
    """

    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]
    scales: np.ndarray | None = None
    oris: np.ndarray | None = None

    def __post_init__(self):
        self.keypoints = _as(self.keypoints, np.float32, 2, "keypoints").reshape(-1, 2)
        n = len(self.keypoints)
        self.keypoint_scores = _as(self.keypoint_scores, np.float32, 1, "keypoint_scores")
        self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2:
            raise ValueError(f"descriptors must be [N, D], got shape {self.descriptors.shape}")
        if len(self.keypoint_scores) != n or len(self.descriptors) != n:
            raise ValueError(
                f"inconsistent feature counts: {n} keypoints, {len(self.keypoint_scores)} "
                f"scores, {len(self.descriptors)} descriptors"
            )
        w, h = (int(v) for v in self.image_size)
        self.image_size = (w, h)
        for name in ("scales", "oris"):
            value = getattr(self, name)
            if value is not None:
                value = _as(value, np.float32, 1, name)
                if len(value) != n:
                    raise ValueError(f"{name} has {len(value)} entries for {n} keypoints")
                setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def descriptor_dim(self) -> int:
        return self.descriptors.shape[1]

    @classmethod
    def empty(cls, image_size: tuple[int, int], descriptor_dim: int) -> Features:
        return cls(
            np.zeros((0, 2), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, descriptor_dim), np.float32),
            image_size,
        )

    def select(self, index: np.ndarray) -> Features:
        """Subset of the features (index: boolean mask or integer indices)."""
        pick = (lambda a: None if a is None else a[index])  # noqa: E731
        return Features(
            self.keypoints[index],
            self.keypoint_scores[index],
            self.descriptors[index],
            self.image_size,
            pick(self.scales),
            pick(self.oris),
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        out = {
            "keypoints": self.keypoints,
            "keypoint_scores": self.keypoint_scores,
            "descriptors": self.descriptors,
            "image_size": np.asarray(self.image_size, np.int64),
        }
        if self.scales is not None:
            out["scales"] = self.scales
        if self.oris is not None:
            out["oris"] = self.oris
        return out


@dataclass
class Matches:
    """Matches of an image pair, from the point of view of image 0.

    Attributes:
        matches0: [N0] int32, index into image 1 or -1 (unmatched).
        matching_scores0: [N0] float32 in [0, 1] (0 where unmatched).
    """

    matches0: np.ndarray
    matching_scores0: np.ndarray

    def __post_init__(self):
        self.matches0 = _as(self.matches0, np.int32, 1, "matches0")
        self.matching_scores0 = _as(self.matching_scores0, np.float32, 1, "matching_scores0")
        if len(self.matches0) != len(self.matching_scores0):
            raise ValueError("matches0 and matching_scores0 differ in length")

    def __len__(self) -> int:
        """Number of matched keypoints."""
        return int((self.matches0 > UNMATCHED).sum())

    @classmethod
    def empty(cls, num_keypoints0: int) -> Matches:
        return cls(
            np.full(num_keypoints0, UNMATCHED, np.int32), np.zeros(num_keypoints0, np.float32)
        )

    @classmethod
    def from_indices(cls, indices: np.ndarray, scores: np.ndarray, num_keypoints0: int) -> Matches:
        """Build from [K, 2] (i0, i1) index pairs and their [K] scores."""
        out = cls.empty(num_keypoints0)
        indices = np.asarray(indices, np.int64).reshape(-1, 2)
        out.matches0[indices[:, 0]] = indices[:, 1]
        out.matching_scores0[indices[:, 0]] = scores
        return out

    def indices(self) -> np.ndarray:
        """[K, 2] int64 array of matched (i0, i1)."""
        i0 = np.flatnonzero(self.matches0 > UNMATCHED)
        return np.stack([i0, self.matches0[i0].astype(np.int64)], 1)

    def scores(self) -> np.ndarray:
        """[K] scores of the pairs returned by `indices()`."""
        return self.matching_scores0[self.matches0 > UNMATCHED]

    def matched_points(self, features0: Features, features1: Features):
        """The matched keypoints: ([K, 2], [K, 2]) float32."""
        idx = self.indices()
        return features0.keypoints[idx[:, 0]], features1.keypoints[idx[:, 1]]


@dataclass
class TwoViewEstimate:
    """Result of a robust two-view estimation.

    Attributes:
        success: False when the estimator failed (too few points, degenerate data, no model).
        model: the estimated model: H_0to1 or F or E as [3, 3] float64, or a
            `featloc.geometry.Pose` (T_0to1) for relative pose. Identity when success is False.
        inliers: [K] bool mask over the input correspondences.
        info: estimator details (backend, threshold, iterations, ...).
    """

    success: bool
    model: Any
    inliers: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inliers))


@dataclass
class LocResult:
    """Result of localizing one query image against a 3D map (6-DoF).

    Attributes:
        cam_from_world: the estimated `featloc.geometry.Pose` (world to camera); identity
            when `localized` is False.
        num_inliers: PnP inliers among the 2D-3D correspondences.
        inlier_mask: [K] bool over the K 2D-3D correspondences given to the solver.
        db_names: the database images whose matches gave the correspondences.
        localized: False when no pose was found (too few correspondences or inliers).
        info: details (solver, threshold, correspondence counts, fallback, reason, ...).
    """

    cam_from_world: Any
    num_inliers: int
    inlier_mask: np.ndarray
    db_names: list[str]
    localized: bool
    info: dict = field(default_factory=dict)
