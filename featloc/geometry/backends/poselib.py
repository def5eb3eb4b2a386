"""PoseLib backend (LO-RANSAC with non-linear refinement)."""

from __future__ import annotations

import numpy as np

from ..pose import Pose

# PoseLib silently ignores unknown option keys, so only these are ever passed.
_RANSAC_KEYS = {"max_iterations", "min_iterations", "success_prob", "max_reproj_error",
                "max_epipolar_error", "seed"}


def _options(conf, **thresholds):
    import poselib

    ransac = {
        "max_iterations": int(conf.max_iterations),
        "min_iterations": int(min(conf.min_iterations, conf.max_iterations)),
        "success_prob": float(conf.confidence),
        "seed": int(conf.seed),
        **thresholds,
    }
    unknown = set(ransac) - _RANSAC_KEYS - set(poselib.RansacOptions())
    if unknown:
        raise ValueError(f"unknown PoseLib RANSAC options: {sorted(unknown)}")
    bundle = {} if conf.refine else {"max_iterations": 0}
    return ransac, bundle


def homography(p0, p1, conf):
    import poselib

    ransac, bundle = _options(conf, max_reproj_error=float(conf.threshold_px))
    H, info = poselib.estimate_homography(p0, p1, ransac, bundle)
    inliers = np.asarray(info.get("inliers", []), bool)
    if not inliers.any() or not np.isfinite(H).all():
        return None, None, {"reason": "PoseLib found no homography"}
    return H / H[2, 2], inliers, {"iterations": info.get("iterations")}


def fundamental(p0, p1, conf):
    import poselib

    ransac, bundle = _options(conf, max_epipolar_error=float(conf.threshold_px))
    F, info = poselib.estimate_fundamental(p0, p1, ransac, bundle)
    inliers = np.asarray(info.get("inliers", []), bool)
    if not inliers.any():
        return None, None, {"reason": "PoseLib found no fundamental matrix"}
    return F, inliers, {"iterations": info.get("iterations")}


def _camera(K):
    import poselib

    params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    w, h = int(round(2 * K[0, 2] + 1)), int(round(2 * K[1, 2] + 1))
    return poselib.Camera("PINHOLE", params, w, h)


def relative_pose(p0, p1, conf, K0, K1):
    import poselib

    # PoseLib measures the epipolar error in pixels through each camera; our threshold is
    # in pixels as well, so it is passed unchanged.
    ransac, bundle = _options(conf, max_epipolar_error=float(conf.threshold_px))
    pose, info = poselib.estimate_relative_pose(p0, p1, _camera(K0), _camera(K1), ransac, bundle)
    inliers = np.asarray(info.get("inliers", []), bool)
    if inliers.sum() < 5:
        return None, None, {"reason": "PoseLib found no relative pose"}
    R, t = np.asarray(pose.R), np.asarray(pose.t)
    norm = np.linalg.norm(t)
    t = t / norm if norm > 0 else t
    from ..estimators import essential_from_pose

    return Pose(R, t), inliers, {"E": essential_from_pose(Pose(R, t)),
                                 "iterations": info.get("iterations")}


def refine_relative_pose(p0, p1, pose: Pose, K0, K1, conf):
    """Non-linear refinement of T_0to1 on inlier pixel correspondences (PoseLib bundle:
    Sampson error with a Cauchy loss whose scale is the RANSAC threshold in pixels)."""
    import poselib

    initial = poselib.CameraPose()
    initial.R, initial.t = pose.R, pose.t
    bundle = {"loss_type": "CAUCHY", "loss_scale": float(conf.threshold_px)}
    refined, info = poselib.refine_relative_pose(p0, p1, initial, _camera(K0), _camera(K1), bundle)
    R, t = np.asarray(refined.R), np.asarray(refined.t)
    norm = np.linalg.norm(t)
    if not (np.isfinite(R).all() and np.isfinite(t).all() and norm > 0):
        raise ValueError("PoseLib refinement returned an invalid pose")
    return Pose(R, t / norm), {"refined": True, "refine_iterations": info.get("iterations")}
