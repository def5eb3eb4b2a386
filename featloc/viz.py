"""Pictures of matches (OpenCV drawing; no display needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io.images import to_rgb, write_image

INLIER_RGB = (40, 200, 40)
OUTLIER_RGB = (230, 40, 40)
MATCH_RGB = (40, 160, 230)  # when no inlier mask is given


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    inliers: np.ndarray | None = None,
    keypoints0: np.ndarray | None = None,
    keypoints1: np.ndarray | None = None,
    text: list[str] | None = None,
    max_lines: int = 300,
) -> np.ndarray:
    """Side-by-side RGB picture of two images with match lines.

    Args:
        points0, points1: [K, 2] matched pixels (x, y) in each image.
        inliers: optional [K] bool; inliers are drawn green, outliers red.
        keypoints0/1: optional all keypoints, drawn as small grey dots.
        text: lines written in a header band above the images.
        max_lines: draw at most this many matches (a random subset) to keep it readable.
    """
    image0, image1 = to_rgb(image0), to_rgb(image1)
    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    gap = 8
    canvas = np.full((max(h0, h1), w0 + gap + w1, 3), 255, np.uint8)
    canvas[:h0, :w0] = image0
    canvas[:h1, w0 + gap :] = image1
    offset = np.array([w0 + gap, 0], np.float32)
    for kpts, off in ((keypoints0, 0), (keypoints1, offset)):
        if kpts is not None:
            for x, y in np.asarray(kpts, np.float32) + off:
                cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (160, 160, 160), -1, cv2.LINE_AA)
    points0 = np.asarray(points0, np.float32).reshape(-1, 2)
    points1 = np.asarray(points1, np.float32).reshape(-1, 2) + offset
    order = np.arange(len(points0))
    if len(order) > max_lines:  # keep the picture readable; inliers drawn last (on top)
        order = np.random.default_rng(0).choice(order, max_lines, replace=False)
    if inliers is not None:
        order = order[np.argsort(np.asarray(inliers)[order], kind="stable")]
    for i in order:
        color = MATCH_RGB if inliers is None else INLIER_RGB if inliers[i] else OUTLIER_RGB
        p, q = points0[i], points1[i]
        cv2.line(canvas, (int(round(p[0])), int(round(p[1]))), (int(round(q[0])), int(round(q[1]))),
                 color, 1, cv2.LINE_AA)
        cv2.circle(canvas, (int(round(p[0])), int(round(p[1]))), 2, color, -1, cv2.LINE_AA)
        cv2.circle(canvas, (int(round(q[0])), int(round(q[1]))), 2, color, -1, cv2.LINE_AA)
    if text:
        header = np.full((12 + 22 * len(text), canvas.shape[1], 3), 255, np.uint8)
        for k, line in enumerate(text):
            cv2.putText(header, line, (8, 24 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0),
                        1, cv2.LINE_AA)
        canvas = np.concatenate([header, canvas])
    return canvas


def save_matches(path: str | Path, *args, **kwargs) -> Path:
    """`draw_matches` written to a PNG file."""
    write_image(path, draw_matches(*args, **kwargs))
    return Path(path)
