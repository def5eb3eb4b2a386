"""Procedural images with plenty of corners and blobs, for the demo and the tests
(the project may not ship or download photographs)."""

from __future__ import annotations

import cv2
import numpy as np


def random_scene_image(
    rng: np.random.Generator, height: int = 480, width: int = 640, num_shapes: int = 120
) -> np.ndarray:
    """An RGB uint8 image of overlapping random polygons, ellipses, lines, text and
    textured patches on a smooth gradient background, with mild noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-60, 60, (2, 3))
    image = base + xx[..., None] / width * slope[0] + yy[..., None] / height * slope[1]
    image = np.clip(image, 0, 255).astype(np.uint8)
    scale = max(height, width)
    for _ in range(num_shapes):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 5)
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(scale // 60, scale // 8))
        if kind == 0:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.4, 1.0, n) * size
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(image, [pts.astype(np.int32)], color, cv2.LINE_AA)
        elif kind == 1:
            axes = (size, int(size * rng.uniform(0.3, 1.0)))
            cv2.ellipse(image, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        elif kind == 2:
            x2, y2 = cx + int(rng.integers(-2 * size, 2 * size)), cy + int(rng.integers(-2 * size, 2 * size))
            cv2.line(image, (cx, cy), (x2, y2), color, int(rng.integers(1, 5)), cv2.LINE_AA)
        elif kind == 3:
            text = "".join(chr(c) for c in rng.integers(65, 91, int(rng.integers(2, 6))))
            cv2.putText(image, text, (cx, cy), cv2.FONT_HERSHEY_SIMPLEX, size / 40, color,
                        max(1, size // 20), cv2.LINE_AA)
        else:
            cell = max(2, size // 4)
            x0, y0 = max(0, cx - size), max(0, cy - size)
            x1, y1 = min(width, cx + size), min(height, cy + size)
            if x1 > x0 and y1 > y0:
                gy, gx = np.mgrid[y0:y1, x0:x1]
                checker = ((gx // cell + gy // cell) % 2).astype(bool)
                patch = image[y0:y1, x0:x1]
                patch[checker] = color
    noise = rng.normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)
