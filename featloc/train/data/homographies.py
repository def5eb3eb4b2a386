"""Random homographies for synthetic training pairs (SuperPoint / MTLDesc sampler).

Normalised-corner formulation (methods 1.12.2): start from the centred square patch of side
`patch_ratio` in normalised image coordinates [0, 1]^2, move its corners (perspective, scale,
translation, rotation), and return the homography that maps that quadrilateral of image 0 onto
the full frame of image 1. Pixel coordinates use the project convention (centre of the top-left
pixel at (0, 0)), so the normalised coordinate u maps to the pixel u * (w - 1).

`H_0to1` maps image-0 pixels to image-1 pixels: a scale s > 1 enlarges the patch, so image 1
sees more of the scene (zoom out, apparent scale 1 / (patch_ratio * s)); an angle a rotates
image 1's content by -a.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class HomographyConf:
    perspective: bool = True  # random perspective distortion of the patch corners
    scaling: bool = True  # random zoom
    rotation: bool = True  # random in-plane rotation
    translation: bool = True  # random shift of the patch
    patch_ratio: float = 0.8  # side of the initial patch, fraction of the image side
    perspective_amplitude_x: float = 0.2  # corner displacement (normalised), 2-sigma bound
    perspective_amplitude_y: float = 0.2
    n_scales: int = 5  # candidate scales drawn per sample (plus 1.0); one is picked
    scale_min: float = 0.8  # patch scale range (methods 1.12.2: U(0.8, 2.0))
    scale_max: float = 2.0
    n_angles: int = 25  # candidate angles drawn per sample; one is picked
    max_angle_deg: float = 90.0  # rotation range +-max_angle_deg (methods 1.12.2: 90)
    translation_overflow: float = 0.05  # how far (normalised) the patch may leave the image
    allow_artifacts: bool = True  # allow the patch to leave the image (black borders)
    max_tries: int = 100  # without artifacts: resample until some candidate stays inside

    def __post_init__(self):
        if not 0 < self.patch_ratio <= 1:
            raise ValueError(f"patch_ratio must be in (0, 1], got {self.patch_ratio}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.n_scales < 1 or self.n_angles < 1:
            raise ValueError("n_scales and n_angles must be >= 1")
        if not 0 <= self.max_angle_deg <= 180:
            raise ValueError(f"max_angle_deg must be in [0, 180], got {self.max_angle_deg}")


def _truncated_normal(rng: np.random.Generator, std: float, size=None) -> np.ndarray:
    """Normal(0, std) resampled outside +-2 std (TensorFlow's truncated_normal)."""
    out = rng.normal(0.0, std, size)
    if std <= 0:
        return np.zeros_like(out)
    bad = np.abs(out) > 2 * std
    while np.any(bad):
        out = np.where(bad, rng.normal(0.0, std, np.shape(out)), out)
        bad = np.abs(out) > 2 * std
    return out


def _inside(quads: np.ndarray) -> np.ndarray:
    """[K, 4, 2] normalised quadrilaterals -> [K] bool, all corners inside [0, 1]^2."""
    return np.all((quads >= 0) & (quads <= 1), axis=(1, 2))


def sample_patch(conf: HomographyConf, rng: np.random.Generator) -> np.ndarray:
    """The normalised quadrilateral [4, 2] of image 0 that becomes the frame of image 1.

    Corner order: top-left, top-right, bottom-right, bottom-left.
    """
    margin = (1 - conf.patch_ratio) / 2
    r = conf.patch_ratio
    quad = margin + np.array([[0, 0], [r, 0], [r, r], [0, r]], np.float64)
    if conf.perspective:
        amp_x, amp_y = conf.perspective_amplitude_x, conf.perspective_amplitude_y
        if not conf.allow_artifacts:
            amp_x, amp_y = min(amp_x, margin), min(amp_y, margin)
        dy = _truncated_normal(rng, amp_y / 2)
        dx_left = _truncated_normal(rng, amp_x / 2)
        dx_right = _truncated_normal(rng, amp_x / 2)
        quad += np.array([[dx_left, dy], [-dx_right, -dy], [dx_right, dy], [-dx_left, -dy]])
    if conf.scaling:
        scales = np.concatenate([rng.uniform(conf.scale_min, conf.scale_max, conf.n_scales), [1.0]])
        center = quad.mean(0)
        candidates = (quad - center)[None] * scales[:, None, None] + center
        if not conf.allow_artifacts:
            candidates = candidates[_inside(candidates)]  # scale 1.0 is always valid
        quad = candidates[rng.integers(len(candidates))]
    if conf.translation:
        t_min, t_max = quad.min(0), (1 - quad).min(0)
        if conf.allow_artifacts:
            t_min = t_min + conf.translation_overflow
            t_max = t_max + conf.translation_overflow
        # a patch larger than the image inverts the interval: shift within it either way
        lo, hi = np.minimum(-t_min, t_max), np.maximum(-t_min, t_max)
        quad = quad + np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1])])
    if conf.rotation:
        max_angle = np.deg2rad(conf.max_angle_deg)
        angles = np.concatenate([rng.uniform(-max_angle, max_angle, conf.n_angles), [0.0]])
        center = quad.mean(0)
        c, s = np.cos(angles), np.sin(angles)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)  # [K, 2, 2]
        candidates = np.einsum("kij,nj->kni", rot, quad - center) + center
        if not conf.allow_artifacts:
            keep = _inside(candidates)
            keep[-1] = True  # angle 0
            candidates = candidates[keep]
        quad = candidates[rng.integers(len(candidates))]
    return quad


def sample_homography(
    size: tuple[int, int],
    conf: HomographyConf,
    rng: np.random.Generator,
    size1: tuple[int, int] | None = None,
) -> np.ndarray:
    """A random H_0to1 [3, 3] float64 between images of size (w, h) (image 1: `size1`)."""
    w0, h0 = size
    w1, h1 = size1 or size
    quad = sample_patch(conf, rng) * [w0 - 1, h0 - 1]
    frame = np.array([[0, 0], [w1 - 1, 0], [w1 - 1, h1 - 1], [0, h1 - 1]], np.float64)
    H = cv2.getPerspectiveTransform(quad.astype(np.float32), frame.astype(np.float32))
    return H / H[2, 2]


def crop_resize_matrix(x0: float, y0: float, crop: float, out: int) -> np.ndarray:
    """Affine [3, 3] mapping pixels of a square crop (top-left pixel (x0, y0), side `crop`
    px) of a larger image to an `out` x `out` image, pixel-centre convention."""
    s = out / crop
    return np.array(
        [[s, 0, (0.5 - x0) * s - 0.5], [0, s, (0.5 - y0) * s - 0.5], [0, 0, 1]], np.float64
    )


def sample_view_pair(
    image_hw: tuple[int, int],
    size: int,
    crop_min: float,
    crop_max: float,
    identity_prob: float,
    conf: HomographyConf,
    rng_crop: np.random.Generator,
    rng_h: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A training pair from one image: a random square crop of side U(crop_min, crop_max)
    (clipped to the image) resized to `size`, and a random homography of that view (identity
    with probability `identity_prob`). Returns (M0 image -> view 0, H view 0 -> view 1); view 1
    is the image warped by H @ M0."""
    h, w = image_hw
    short = min(h, w)
    crop = rng_crop.uniform(min(crop_min, short), min(crop_max, short))
    x0, y0 = rng_crop.uniform(0, w - crop), rng_crop.uniform(0, h - crop)
    M0 = crop_resize_matrix(x0, y0, crop, size)
    H = np.eye(3) if rng_h.random() < identity_prob else sample_homography((size, size), conf, rng_h)
    return M0, H


def scale_matrix(factor: int) -> np.ndarray:
    """Maps full-resolution pixels to the pixels of a map downsampled by `factor`."""
    s = 1.0 / factor
    return np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]], np.float64)
