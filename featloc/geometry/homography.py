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
