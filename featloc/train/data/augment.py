"""Photometric augmentation (methods 1.12.2), pure functions of an explicit np.random.Generator.

Every function takes and returns a float32 image in [0, 255] (H, W) or (H, W, C); `photometric`
applies the enabled steps in the listed order and returns uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PhotometricConf:
    probability: float = 0.5  # chance that a view is augmented at all (methods: 0.5)
    noise_std: float = 5.0  # additive Gaussian noise sigma (0-255 scale); 0: off
    salt_pepper_max: float = 0.0035  # salt-and-pepper probability ~ U(0, this); 0: off
    brightness_delta: float = 10.0  # additive brightness ~ U(-d, d); 0: off
    contrast_min: float = 0.8  # contrast factor ~ U(min, max) about the mean; 1, 1: off
    contrast_max: float = 1.2
    shade_ellipses: int = 20  # random shading: ellipses drawn; 0: off
    shade_transparency: float = 0.5  # shading strength ~ U(-t, t)
    shade_kernel_min: int = 50  # shading blur kernel range (px, at the training crop size)
    shade_kernel_max: int = 100
    motion_blur_max: int = 7  # motion blur kernel size <= this (odd); < 3: off
    # Beyond methods 1.12.2 (off by default): illumination changes like the project's
    # HPatches-format benchmark (featloc.synth.hpatches: gamma, colour cast)
    gamma_max: float = 1.0  # gamma ~ exp(U(-log g, log g)); 1: off
    colour_gain: float = 0.0  # per-channel gain ~ 1 + U(-c, c); 0: off

    def __post_init__(self):
        if not 0 <= self.probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if self.contrast_min > self.contrast_max or self.shade_kernel_min > self.shade_kernel_max:
            raise ValueError("contrast_min/shade_kernel_min must not exceed their max")
        if self.gamma_max < 1.0 or self.colour_gain < 0:
            raise ValueError("gamma_max must be >= 1 and colour_gain >= 0")


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    return image + np.float32(std) * rng.standard_normal(image.shape, dtype=np.float32)


def salt_and_pepper(image: np.ndarray, rng: np.random.Generator, max_prob: float) -> np.ndarray:
    prob = rng.uniform(0, max_prob)
    u = rng.random(image.shape[:2])
    out = image.copy()
    out[u < prob / 2] = 0.0
    out[u > 1 - prob / 2] = 255.0
    return out


def brightness(image: np.ndarray, rng: np.random.Generator, delta: float) -> np.ndarray:
    return image + np.float32(rng.uniform(-delta, delta))


def contrast(image: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    mean = image.mean(axis=(0, 1), keepdims=True)
    return (image - mean) * np.float32(rng.uniform(lo, hi)) + mean


def gamma(image: np.ndarray, rng: np.random.Generator, max_gamma: float) -> np.ndarray:
    g = np.exp(rng.uniform(-np.log(max_gamma), np.log(max_gamma)))
    return 255.0 * (np.clip(image, 0, 255) / 255.0) ** np.float32(g)


def colour_cast(image: np.ndarray, rng: np.random.Generator, gain: float) -> np.ndarray:
    if image.ndim != 3:
        return image
    return image * (1 + rng.uniform(-gain, gain, image.shape[2])).astype(np.float32)


def random_shade(
    image: np.ndarray,
    rng: np.random.Generator,
    n_ellipses: int,
    transparency: float,
    kernel_range: tuple[int, int],
) -> np.ndarray:
    """Darken or brighten the image under blurred random ellipses (SuperPoint additive_shade)."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.float32)
    max_rad = max(1, min(h, w) // 4)
    for _ in range(n_ellipses):
        ax = int(rng.integers(1, max_rad + 1))
        ay = int(rng.integers(1, max_rad + 1))
        max_r = max(ax, ay)
        x = int(rng.integers(max_r, max(max_r + 1, w - max_r)))
        y = int(rng.integers(max_r, max(max_r + 1, h - max_r)))
        angle = float(rng.uniform(0, 90))
        cv2.ellipse(mask, (x, y), (ax, ay), angle, 0, 360, 255, -1)
    alpha = rng.uniform(-transparency, transparency)
    kernel = int(rng.integers(kernel_range[0], kernel_range[1] + 1))
    kernel += 1 - kernel % 2  # odd
    mask = cv2.GaussianBlur(mask, (kernel, kernel), 0)
    factor = 1 - alpha * mask / 255.0
    return image * (factor[..., None] if image.ndim == 3 else factor)


def motion_blur(image: np.ndarray, rng: np.random.Generator, max_kernel: int) -> np.ndarray:
    """Blur along a random horizontal, vertical or diagonal line."""
    size = int(rng.integers(0, (max_kernel + 1) // 2)) * 2 + 1  # odd, 1..max_kernel
    if size < 3:
        return image
    mode = rng.choice(["h", "v", "diag_down", "diag_up"])
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    if mode == "h":
        kernel[c, :] = 1
    elif mode == "v":
        kernel[:, c] = 1
    elif mode == "diag_down":
        kernel = np.eye(size, dtype=np.float32)
    else:
        kernel = np.flip(np.eye(size, dtype=np.float32), 0).copy()
    # Gaussian taper along the line so the blur has no hard ends
    var = size * size / 16.0
    grid = np.arange(size, dtype=np.float32) - c
    taper = np.exp(-(grid[:, None] ** 2 + grid[None] ** 2) / (2 * var))
    kernel *= taper
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel)


def photometric(image: np.ndarray, conf: PhotometricConf, rng: np.random.Generator) -> np.ndarray:
    """Augment a uint8 image (H, W) or (H, W, 3) with probability `conf.probability`."""
    if rng.random() >= conf.probability:
        return image
    out = image.astype(np.float32)
    if conf.noise_std > 0:
        out = gaussian_noise(out, rng, conf.noise_std)
    if conf.salt_pepper_max > 0:
        out = salt_and_pepper(out, rng, conf.salt_pepper_max)
    if conf.brightness_delta > 0:
        out = brightness(out, rng, conf.brightness_delta)
    if (conf.contrast_min, conf.contrast_max) != (1.0, 1.0):
        out = contrast(out, rng, conf.contrast_min, conf.contrast_max)
    if conf.gamma_max > 1.0:
        out = gamma(out, rng, conf.gamma_max)
    if conf.colour_gain > 0:
        out = colour_cast(out, rng, conf.colour_gain)
    if conf.shade_ellipses > 0 and conf.shade_transparency > 0:
        out = random_shade(out, rng, conf.shade_ellipses, conf.shade_transparency,
                           (conf.shade_kernel_min, conf.shade_kernel_max))
    if conf.motion_blur_max >= 3:
        out = motion_blur(out, rng, conf.motion_blur_max)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
