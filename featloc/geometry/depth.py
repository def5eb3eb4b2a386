"""Ground-truth correspondences from depth maps and a relative pose (methods.md 2.8).

Depth maps are [H, W] z-depths (distance along the optical axis, not along the ray) at the
pixel centres of the project convention (pixel (x, y) = depth[y, x]); values <= 0 or
non-finite are invalid. Intrinsics are pinhole [3, 3] K (undistorted images).
"""

from __future__ import annotations

import numpy as np

from .correspondence import labels_from_reprojection
from .pose import Pose

# LoFTR checks |z_proj - z_sampled| / z_sampled < 0.2 on noisy MVS depth; rendered or
# sensor depth is much cleaner, so the default is tighter.
DEFAULT_REL_DEPTH_TOL = 0.05


def _check_K(K, name):
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"{name} must be 3x3, got {K.shape}")
    return K


def sample_depth(depth: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear depth at [N, 2] sub-pixel points.

    Interpolates *inverse* depth, which is affine in the pixel coordinates on a plane, so
    the value is exact on piecewise-planar surfaces (and equal to depth interpolation to
    first order elsewhere). A point is invalid if any of its 4 neighbours is invalid or it
    lies outside [0, W-1] x [0, H-1], so depth is never averaged with holes.

    Returns:
        depth [N] float64 (0 where invalid) and valid [N] bool.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    h, w = depth.shape
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    with np.errstate(invalid="ignore"):
        inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    xs = np.where(inside, x, 0.0)
    ys = np.where(inside, y, 0.0)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    wx, wy = xs - x0, ys - y0
    corners = [depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]]
    weights = [(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy]
    valid = inside.copy()
    inv = np.zeros(len(pts))
    for d, wgt in zip(corners, weights, strict=True):
        d = d.astype(np.float64)
        ok = np.isfinite(d) & (d > 0)
        valid &= ok
        inv += wgt * np.where(ok, 1.0 / np.where(ok, d, 1.0), 0.0)
    out = np.zeros(len(pts))
    out[valid] = 1.0 / inv[valid]
    return out, valid


def project_with_depth(
    points: np.ndarray,
    depth0: np.ndarray,
    K0: np.ndarray,
    T_0to1: Pose,
    K1: np.ndarray,
    depth1: np.ndarray | None = None,
    size1: tuple[int, int] | None = None,
    rel_depth_tol: float = DEFAULT_REL_DEPTH_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Project [N, 2] pixels of image 0 into image 1 with the depth of image 0.

    Args:
        points: [N, 2] pixels of image 0.
        depth0: [H0, W0] depth of image 0; K0, K1: [3, 3] intrinsics.
        T_0to1: pose from camera 0 to camera 1.
        depth1: optional [H1, W1] depth of image 1, for the image bounds and the occlusion
            check |z_proj - depth1| / depth1 < rel_depth_tol.
        size1: (w, h) of image 1 when depth1 is not given (bounds check only).
    Returns:
        points1 [N, 2] (NaN where depth0 is invalid or the point is behind camera 1) and
        valid [N] bool: valid depth0, in front of camera 1, inside image 1, and (with depth1)
        not occluded. Valid implies a finite points1.
    """
    points, info = _project(points, depth0, K0, T_0to1, K1, depth1, size1, rel_depth_tol)
    return points, info["visible"]


def _project(points, depth0, K0, T_0to1, K1, depth1, size1, rel_depth_tol):
    """`project_with_depth` plus the reasons a point is not visible."""
    K0, K1 = _check_K(K0, "K0"), _check_K(K1, "K1")
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    z0, valid_depth = sample_depth(depth0, pts)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], 1)
    X0 = (homog @ np.linalg.inv(K0).T) * z0[:, None]
    X1 = T_0to1.transform(X0)
    in_front = valid_depth & (X1[:, 2] > 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = X1 @ K1.T
        out = proj[:, :2] / proj[:, 2:]
    out[~in_front] = np.nan
    if depth1 is not None:
        size1 = (depth1.shape[1], depth1.shape[0])
    inside = in_front.copy()
    if size1 is not None:
        w, h = size1
        with np.errstate(invalid="ignore"):
            inside &= (out[:, 0] >= -0.5) & (out[:, 0] < w - 0.5)
            inside &= (out[:, 1] >= -0.5) & (out[:, 1] < h - 0.5)
    visible = inside.copy()
    occluded = np.zeros(len(pts), bool)
    if depth1 is not None:
        d1, valid1 = sample_depth(depth1, np.where(inside[:, None], out, 0.0))
        valid1 &= inside
        with np.errstate(divide="ignore", invalid="ignore"):
            consistent = np.abs(X1[:, 2] - d1) < rel_depth_tol * d1
        visible &= valid1 & consistent
        # Only a surface clearly in front of the projected point proves an occlusion;
        # a surface behind it means a depth error, not a missing correspondence.
        occluded = valid1 & ~consistent & (d1 < X1[:, 2])
    return out, {"valid_depth": valid_depth, "visible": visible, "occluded": occluded}


def gt_matches_from_pose_depth(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    depth0: np.ndarray,
    depth1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    T_0to1: Pose,
    pos_th_px: float = 3.0,
    neg_th_px: float = 5.0,
    rel_depth_tol: float = DEFAULT_REL_DEPTH_TOL,
    return_matches1: bool = False,
):
    """Ground-truth labels of [N0, 2] / [N1, 2] keypoints from depth maps and T_0to1.

    Projects both ways with `project_with_depth`. Positives are mutual nearest
    reprojections within `pos_th_px` among points visible both ways (in front, inside the
    other image, not occluded). A point with valid depth is unmatched (-1) if it is occluded
    or its reprojection is farther than `neg_th_px` from every keypoint of the other image
    (which includes points falling outside it); points without valid depth are ignored (-2).

    Returns:
        matches0 [N0] int64 (index, -1 UNMATCHED, -2 IGNORE); with `return_matches1`, also
        matches1 [N1].
    """
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    p01, info0 = _project(kpts0, depth0, K0, T_0to1, K1, depth1, None, rel_depth_tol)
    p10, info1 = _project(kpts1, depth1, K1, T_0to1.inv(), K0, depth0, None, rel_depth_tol)
    matches0, matches1 = labels_from_reprojection(
        kpts0, kpts1, p01, p10, info0["visible"], info1["visible"], pos_th_px, neg_th_px,
        may_be_negative0=info0["valid_depth"], may_be_negative1=info1["valid_depth"],
        no_match0=info0["occluded"], no_match1=info1["occluded"],
    )
    return (matches0, matches1) if return_matches1 else matches0
