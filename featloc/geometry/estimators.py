"""Robust two-view estimation behind one interface, with OpenCV and PoseLib backends.

Every function returns a `TwoViewEstimate`; a failure (too few points, degenerate data, no
model found, a backend exception) gives `success=False` with an identity model and no
inliers, never an exception. Results are repeatable: USAC and PoseLib draw from the conf's
seed; OpenCV's classic RANSAC / LMedS (`method="ransac"`) use a fixed internal generator, so
there the seed changes nothing (checked for homography, fundamental and essential matrices).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..config import make_conf
from ..types import TwoViewEstimate
from .pose import Pose

logger = logging.getLogger(__name__)

BACKENDS = ("opencv", "poselib")
OPENCV_METHODS = ("usac_magsac", "usac_default", "usac_accurate", "usac_fast", "ransac", "lmeds")
MIN_POINTS = {"homography": 4, "fundamental": 8, "essential": 5}


@dataclass(frozen=True)
class RansacConf:
    backend: str = "opencv"  # "opencv" or "poselib"
    method: str = "usac_magsac"  # OpenCV only: usac_magsac | usac_default | usac_accurate | ...
    threshold_px: float = 3.0  # inlier threshold in pixels (reprojection / epipolar distance)
    confidence: float = 0.9999  # RANSAC success probability
    max_iterations: int = 10000
    min_iterations: int = 100  # PoseLib only
    seed: int = 0  # random generator seed (USAC, PoseLib; OpenCV's classic RANSAC ignores it)
    refine: bool = True  # non-linear refinement on the inliers (PoseLib bundle; OpenCV LO)
    # Relative pose with the OpenCV backend only: polish (R, t) on the RANSAC inliers with
    # PoseLib's non-linear refinement (Sampson error, Cauchy loss at threshold_px).
    poselib_refine: bool = False

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.method not in OPENCV_METHODS:
            raise ValueError(f"method must be one of {OPENCV_METHODS}, got {self.method!r}")
        if not self.threshold_px > 0:
            raise ValueError(f"threshold_px must be > 0, got {self.threshold_px}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def ransac_conf(conf: RansacConf | dict | None = None, **overrides) -> RansacConf:
    if isinstance(conf, RansacConf) and not overrides:
        return conf
    return make_conf(RansacConf, conf if isinstance(conf, dict) else (conf and vars(conf)), overrides)


def _failure(kind: str, n: int, reason: str, conf: RansacConf) -> TwoViewEstimate:
    model = Pose.identity() if kind == "relative_pose" else np.eye(3)
    return TwoViewEstimate(
        False, model, np.zeros(n, bool), {"backend": conf.backend, "reason": reason}
    )


def _check(points0, points1, kind, conf):
    p0 = np.asarray(points0, np.float64).reshape(-1, 2)
    p1 = np.asarray(points1, np.float64).reshape(-1, 2)
    if len(p0) != len(p1):
        raise ValueError(f"point counts differ: {len(p0)} vs {len(p1)}")
    finite = np.isfinite(p0).all(1) & np.isfinite(p1).all(1)
    need = MIN_POINTS[kind if kind != "relative_pose" else "essential"]
    if finite.sum() < need:
        return p0, p1, finite, f"{int(finite.sum())} valid correspondences, need {need}"
    return p0, p1, finite, None


def _run(kind: str, p0, p1, conf: RansacConf, **kwargs) -> TwoViewEstimate:
    p0, p1, finite, problem = _check(p0, p1, kind, conf)
    if problem:
        return _failure(kind, len(p0), problem, conf)
    if conf.backend == "opencv":
        from .backends import opencv as backend
    else:
        from .backends import poselib as backend
    try:
        model, inliers, info = getattr(backend, kind)(p0[finite], p1[finite], conf, **kwargs)
    except Exception as exc:  # a backend error is a failed estimate, not a crash
        logger.debug("%s %s failed: %s", conf.backend, kind, exc)
        return _failure(kind, len(p0), f"{type(exc).__name__}: {exc}", conf)
    if model is None:
        return _failure(kind, len(p0), info.get("reason", "no model found"), conf)
    mask = np.zeros(len(p0), bool)
    mask[np.flatnonzero(finite)] = inliers
    info = {"backend": conf.backend, "threshold_px": conf.threshold_px, **info}
    return TwoViewEstimate(True, model, mask, info)


def estimate_homography(points0, points1, conf: RansacConf | dict | None = None) -> TwoViewEstimate:
    """H_0to1 from [K, 2] pixel correspondences (threshold: reprojection error in image 1)."""
    return _run("homography", points0, points1, ransac_conf(conf))


def estimate_fundamental(points0, points1, conf: RansacConf | dict | None = None) -> TwoViewEstimate:
    """F with x1^T F x0 = 0 (threshold: epipolar distance in pixels)."""
    return _run("fundamental", points0, points1, ransac_conf(conf))


def estimate_relative_pose(
    points0, points1, K0: np.ndarray, K1: np.ndarray, conf: RansacConf | dict | None = None
) -> TwoViewEstimate:
    """T_0to1 (a `Pose`, unit-norm translation) from pixel correspondences and intrinsics.

    The pixel threshold is converted to normalised image coordinates by the mean focal length
    (the SuperGlue/LoFTR protocol); the cheirality check picks among the essential-matrix
    decompositions. `info["E"]` holds the essential matrix.
    """
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    conf = ransac_conf(conf)
    est = _run("relative_pose", points0, points1, conf, K0=K0, K1=K1)
    if est.success and conf.poselib_refine and conf.backend == "opencv":
        from .backends import poselib as refiner

        p0 = np.asarray(points0, np.float64).reshape(-1, 2)[est.inliers]
        p1 = np.asarray(points1, np.float64).reshape(-1, 2)[est.inliers]
        try:
            pose, info = refiner.refine_relative_pose(p0, p1, est.model, K0, K1, conf)
        except Exception as exc:  # keep the RANSAC estimate if the refinement fails
            logger.debug("PoseLib refinement failed: %s", exc)
        else:
            est = TwoViewEstimate(True, pose, est.inliers,
                                  {**est.info, "E": essential_from_pose(pose), **info})
    return est


def estimate_essential(
    points0, points1, K0: np.ndarray, K1: np.ndarray, conf: RansacConf | dict | None = None
) -> TwoViewEstimate:
    """Essential matrix (model) from pixel correspondences and intrinsics."""
    est = estimate_relative_pose(points0, points1, K0, K1, conf)
    if not est.success:
        return TwoViewEstimate(False, np.eye(3), est.inliers, est.info)
    return TwoViewEstimate(True, est.info["E"], est.inliers, est.info)


def essential_from_pose(pose: Pose) -> np.ndarray:
    t = pose.t
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return tx @ pose.R
