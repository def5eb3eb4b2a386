"""OpenCV backend (USAC framework, MAGSAC++ by default)."""

from __future__ import annotations

import cv2
import numpy as np

from ..pose import Pose

_USAC = {
    "usac_magsac": cv2.USAC_MAGSAC,
    "usac_default": cv2.USAC_DEFAULT,
    "usac_accurate": cv2.USAC_ACCURATE,
    "usac_fast": cv2.USAC_FAST,
}


def _usac_params(conf, threshold: float) -> cv2.UsacParams:
    """USAC parameters with an explicit seed. The fields follow OpenCV's presets for the
    chosen method (sampler, score, local optimisation)."""
    params = cv2.UsacParams()
    params.threshold = float(threshold)
    params.confidence = float(conf.confidence)
    params.maxIterations = int(conf.max_iterations)
    params.randomGeneratorState = int(conf.seed)
    params.sampler = cv2.SAMPLING_UNIFORM
    params.isParallel = False  # parallel USAC is not deterministic
    if conf.method == "usac_magsac":
        params.score = cv2.SCORE_METHOD_MAGSAC
        params.loMethod = cv2.LOCAL_OPTIM_SIGMA
        params.loIterations = 10 if conf.refine else 0
        params.loSampleSize = 50
        params.final_polisher = cv2.MAGSAC if conf.refine else cv2.NONE_POLISHER
        params.final_polisher_iterations = 10 if conf.refine else 0
    elif conf.method == "usac_fast":
        params.score = cv2.SCORE_METHOD_MSAC
        params.loMethod = cv2.LOCAL_OPTIM_INNER_AND_ITER_LO if conf.refine else cv2.LOCAL_OPTIM_NULL
        params.loIterations, params.loSampleSize = 5, 14
        params.final_polisher = cv2.COVARIANCE if conf.refine else cv2.NONE_POLISHER
        params.final_polisher_iterations = 3
    else:  # usac_default / usac_accurate: MSAC with LO-RANSAC
        params.score = cv2.SCORE_METHOD_MSAC
        params.loMethod = cv2.LOCAL_OPTIM_INNER_LO if conf.refine else cv2.LOCAL_OPTIM_NULL
        params.loIterations, params.loSampleSize = 10, 14
        params.final_polisher = cv2.COVARIANCE if conf.refine else cv2.NONE_POLISHER
        params.final_polisher_iterations = 3
    return params


def _classic_flag(method: str) -> int:
    return {"ransac": cv2.RANSAC, "lmeds": cv2.LMEDS}[method]


def homography(p0, p1, conf):
    if conf.method in _USAC:
        H, mask = cv2.findHomography(p0, p1, _usac_params(conf, conf.threshold_px))
    else:
        cv2.setRNGSeed(int(conf.seed))
        H, mask = cv2.findHomography(
            p0, p1, _classic_flag(conf.method), conf.threshold_px,
            maxIters=conf.max_iterations, confidence=conf.confidence,
        )
    if H is None or H.shape != (3, 3) or not np.isfinite(H).all():
        return None, None, {"reason": "OpenCV found no homography"}
    return H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H, mask.ravel() > 0, {"method": conf.method}


def fundamental(p0, p1, conf):
    if conf.method in _USAC:
        F, mask = cv2.findFundamentalMat(p0, p1, _usac_params(conf, conf.threshold_px))
    else:
        cv2.setRNGSeed(int(conf.seed))
        flag = cv2.FM_RANSAC if conf.method == "ransac" else cv2.FM_LMEDS
        F, mask = cv2.findFundamentalMat(
            p0, p1, flag, conf.threshold_px, conf.confidence, conf.max_iterations
        )
    if F is None or F.shape != (3, 3) or not np.isfinite(F).all():
        return None, None, {"reason": "OpenCV found no fundamental matrix"}
    return F, mask.ravel() > 0, {"method": conf.method}


def relative_pose(p0, p1, conf, K0, K1):
    # Normalise with the intrinsics and convert the pixel threshold with the mean focal
    # length (SuperGlue/LoFTR protocol), so both cameras may differ.
    n0 = cv2.undistortPoints(p0.reshape(-1, 1, 2), K0, None).reshape(-1, 2)
    n1 = cv2.undistortPoints(p1.reshape(-1, 1, 2), K1, None).reshape(-1, 2)
    f_mean = np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]])
    thresh = conf.threshold_px / f_mean
    eye = np.eye(3)
    if conf.method in _USAC:
        E, mask = cv2.findEssentialMat(n0, n1, eye, eye, None, None, _usac_params(conf, thresh))
    else:
        cv2.setRNGSeed(int(conf.seed))
        E, mask = cv2.findEssentialMat(
            n0, n1, eye, cv2.RANSAC if conf.method == "ransac" else cv2.LMEDS,
            conf.confidence, thresh, maxIters=conf.max_iterations,
        )
    if E is None or not np.isfinite(E).all():
        return None, None, {"reason": "OpenCV found no essential matrix"}
    mask = mask.ravel() > 0
    best = None
    # findEssentialMat may stack several solutions (3k x 3): keep the one with the most
    # points in front of both cameras.
    for Ek in np.split(E, len(E) // 3):
        count, R, t, cheir, _ = cv2.recoverPose(
            Ek, n0, n1, eye, distanceThresh=1e9, mask=mask.astype(np.uint8).copy()
        )
        if best is None or count > best[0]:
            best = (count, R, t.ravel(), cheir.ravel() > 0, Ek)
    count, R, t, inliers, Ek = best
    if count < 5:
        return None, None, {"reason": f"only {count} points pass the cheirality check"}
    return Pose(R, t), inliers, {"E": Ek, "method": conf.method, "threshold_norm": thresh}
