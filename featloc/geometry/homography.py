"""Homography helpers (pure functions). `H_0to1` maps image-0 pixels to image-1 pixels."""

from __future__ import annotations

import numpy as np


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply a homography to [N, 2] points. Points mapped to infinity come back as inf/nan."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    H = np.asarray(H, np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"H must be 3x3, got {H.shape}")
    homog = points @ H[:, :2].T + H[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return homog[:, :2] / homog[:, 2:]


def homography_jacobian(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N, 2, 2] Jacobians d warp_points(x, H) / dx at [N, 2] points (analytic)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    H = np.asarray(H, np.float64)
    homog = points @ H[:, :2].T + H[:, 2]
    w = homog[:, 2, None, None]
    mapped = homog[:, :2, None] / w
    return (H[None, :2, :2] - mapped * H[None, 2:, :2]) / w


def image_corners(size: tuple[int, int]) -> np.ndarray:
    """The four corners (w, h) -> [4, 2]: (0,0), (w-1,0), (w-1,h-1), (0,h-1), i.e. the centres
    of the corner pixels in the project's pixel convention."""
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def homography_corner_error(H_est: np.ndarray, H_gt: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance (px) between the image-0 corners warped by H_est and by H_gt."""
    corners = image_corners(size)
    err = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_gt), axis=1)
    value = float(np.mean(err))
    return value if np.isfinite(value) else float("inf")


def scale_homography(H: np.ndarray, scale0: tuple[float, float], scale1: tuple[float, float]):
    """H between resized images, given H between originals and per-axis scales (new/old)
    with the pixel-centre convention (x' = (x + 0.5) s - 0.5)."""

    def S(s):
        return np.array([[s[0], 0, 0.5 * s[0] - 0.5], [0, s[1], 0.5 * s[1] - 0.5], [0, 0, 1]])

    return S(scale1) @ np.asarray(H, np.float64) @ np.linalg.inv(S(scale0))


def gt_matches_from_homography(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    H_0to1: np.ndarray,
    pos_th_px: float = 3.0,
    neg_th_px: float = 6.0,
    size0: tuple[int, int] | None = None,
    size1: tuple[int, int] | None = None,
    return_matches1: bool = False,
):
    """Ground-truth labels of [N0, 2] / [N1, 2] keypoints related by H_0to1 (methods.md 2.8).

    Positives: mutual nearest reprojections (max of the errors in both images) within
    `pos_th_px`. A point is unmatched (-1) if its reprojection is farther than `neg_th_px`
    from every keypoint of the other image, else ignored (-2). With the image sizes (w, h),
    points that warp outside the other image cannot be positives. glue-factory's default
    neg_th is 6 px (3 px in the LightGlue homography config).

    Returns:
        matches0 [N0] int64 (-1 UNMATCHED, -2 IGNORE); with `return_matches1`, also matches1.
    """
    from .correspondence import labels_from_reprojection

    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    H = np.asarray(H_0to1, np.float64)
    p01, p10 = warp_points(kpts0, H), warp_points(kpts1, np.linalg.inv(H))

    def visible(points, size):
        ok = np.isfinite(points).all(1)
        if size is not None:
            w, h = size
            with np.errstate(invalid="ignore"):
                ok &= (points[:, 0] >= -0.5) & (points[:, 0] < w - 0.5)
                ok &= (points[:, 1] >= -0.5) & (points[:, 1] < h - 0.5)
        return ok

    matches0, matches1 = labels_from_reprojection(
        kpts0, kpts1, p01, p10, visible(p01, size1), visible(p10, size0), pos_th_px, neg_th_px
    )
    return (matches0, matches1) if return_matches1 else matches0
