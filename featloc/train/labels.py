"""Detector pseudo-labels by homographic adaptation (SuperPoint; methods 1.12.3, TRAINING.md 1).

For each training image: warp it with N random homographies (the identity first), compute a
teacher detector's response map on every warp, un-warp the maps, average them where they are
defined, then keep local maxima (NMS radius r) above a threshold, best `top_k` first,
optionally refined to sub-pixel positions by a parabola through each maximum and its
neighbours, per axis
(`subpixel`; integer positions put up to half a pixel of fixed error into every label: 0.82 px
localisation error against 0.59 px refined on held-out pairs, scripts/label_localisation.py).

The teacher is a `ResponseDetector`: any callable mapping a gray float32 image in [0, 1] to a
non-negative response map of the same size. Classical ones (Shi-Tomasi, Harris, DoG) are built
in, and so are the project's trained SAMFeat networks ("samfeat", "samfeat-lite": their detection
probability, `SAMFeat.score_map`); others can be added with `register_detector`.

Labels are computed once per (image, settings) and cached as one `.npy` per image holding
[K, 3] float32 rows (x, y, score) in the pixels of the cached training image. The computation
is resumable (existing files are skipped) and the writes are atomic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..progress import track
from .data.cache import ImageCache, atomic_save_npy, digest
from .data.homographies import HomographyConf, sample_homography

logger = logging.getLogger(__name__)

ResponseDetector = Callable[[np.ndarray], np.ndarray]


def _adaptation_homographies() -> HomographyConf:
    # SuperPoint's homographic-adaptation settings: milder than the training pairs, so that the
    # detector sees the same structure at slightly different scales and orientations.
    return HomographyConf(patch_ratio=0.85, perspective_amplitude_x=0.2,
                          perspective_amplitude_y=0.2, scale_min=0.8, scale_max=1.2,
                          max_angle_deg=30.0, translation_overflow=0.05)


@dataclass(frozen=True)
class LabelConf:
    detector: str = "shi_tomasi"  # teacher response: shi_tomasi | harris | dog | registered name
    block_size: int = 3  # corner detectors: neighbourhood (px)
    num_homographies: int = 64  # warps aggregated per image (the identity is one of them)
    border_erode_px: int = 6  # ignore responses this close to a warp's black border
    nms_radius: int = 4  # local-maximum radius (px)
    threshold: float = 0.02  # min aggregated response (each warp is normalised to [0, 1])
    top_k: int = 1000  # keep at most this many labels per image; <= 0: all
    image_border_px: int = 4  # no labels this close to the image border
    subpixel: bool = False  # refine each maximum by a per-axis parabola (module docstring)
    # detector "samfeat" / "samfeat-lite": a trained SAMFeat network as the teacher (its
    # detection probability); weights file, "": the shipped one
    weights: str = ""
    # each warp's response is divided by this percentile of itself and clipped to [0, 1]; a
    # peaky teacher with many strong maxima (a network's probability) wants 100, or its best
    # peaks become flat plateaus
    normalise_percentile: float = 99.9
    seed: int = 0  # homography stream of the adaptation
    homography: HomographyConf = field(default_factory=_adaptation_homographies)

    def __post_init__(self):
        if self.num_homographies < 1:
            raise ValueError(f"labels.num_homographies must be >= 1, got {self.num_homographies}")
        if self.weights and self.detector in ("shi_tomasi", "harris", "dog"):
            raise ValueError(f"labels.weights is for a network teacher, not {self.detector!r}")
        if not 0 < self.normalise_percentile <= 100:
            raise ValueError("labels.normalise_percentile must be in (0, 100], got "
                             f"{self.normalise_percentile}")


def _shi_tomasi(conf: LabelConf) -> ResponseDetector:
    return lambda gray: cv2.cornerMinEigenVal(gray, conf.block_size, 3)


def _harris(conf: LabelConf) -> ResponseDetector:
    return lambda gray: np.maximum(cv2.cornerHarris(gray, conf.block_size, 3, 0.04), 0)


def _dog(conf: LabelConf) -> ResponseDetector:
    def response(gray):
        sigmas = [1.0, 1.6, 2.56, 4.1]
        blurred = [cv2.GaussianBlur(gray, (0, 0), s) for s in sigmas]
        return np.max([np.abs(a - b) for a, b in zip(blurred[:-1], blurred[1:], strict=True)], axis=0)
    return response


def _samfeat(arch: str) -> Callable[[LabelConf], ResponseDetector]:
    # A network trained in the project as the teacher (a "bootstrap model", methods 1.12.3);
    # it sees the gray warps like the classical teachers.
    def factory(conf: LabelConf) -> ResponseDetector:
        from ..features.samfeat import SAMFeat, SAMFeatConf

        extractor = SAMFeat(SAMFeatConf(arch=arch, weights=conf.weights, resize_max=0))
        return extractor.score_map
    return factory


_DETECTORS: dict[str, Callable[[LabelConf], ResponseDetector]] = {
    "shi_tomasi": _shi_tomasi,
    "harris": _harris,
    "dog": _dog,
    "samfeat": _samfeat("vgg"),
    "samfeat-lite": _samfeat("lite"),
}


def register_detector(name: str, factory: Callable[[LabelConf], ResponseDetector]) -> None:
    """Make a teacher available as `LabelConf.detector = name` (e.g. a bootstrap network)."""
    _DETECTORS[name] = factory


def build_detector(conf: LabelConf) -> ResponseDetector:
    if conf.detector not in _DETECTORS:
        raise ValueError(f"unknown label detector {conf.detector!r}; available: {sorted(_DETECTORS)}")
    return _DETECTORS[conf.detector](conf)


def _normalise(response: np.ndarray, mask: np.ndarray, percentile: float = 99.9) -> np.ndarray:
    values = response[mask > 0]
    if values.size == 0:
        return np.zeros_like(response)
    scale = float(np.percentile(values, percentile))
    return np.clip(response / scale, 0, 1) if scale > 0 else np.zeros_like(response)


def aggregate_response(
    image: np.ndarray, detector: ResponseDetector, conf: LabelConf, rng: np.random.Generator
) -> np.ndarray:
    """Mean un-warped response [H, W] float32 over `conf.num_homographies` warps."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    gray = gray.astype(np.float32) / 255.0
    h, w = gray.shape
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    ones = np.ones((h, w), np.float32)
    kernel = np.ones((2 * conf.border_erode_px + 1,) * 2, np.uint8)
    for i in range(conf.num_homographies):
        H = np.eye(3) if i == 0 else sample_homography((w, h), conf.homography, rng)
        warped = cv2.warpPerspective(gray, H, (w, h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(ones, H, (w, h), flags=cv2.INTER_NEAREST)
        if i > 0 and conf.border_erode_px > 0:
            mask = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
        response = _normalise(np.asarray(detector(warped), np.float32), mask,
                              conf.normalise_percentile) * mask
        H_inv = np.linalg.inv(H)
        total += cv2.warpPerspective(response, H_inv, (w, h), flags=cv2.INTER_LINEAR)
        count += cv2.warpPerspective(mask, H_inv, (w, h), flags=cv2.INTER_LINEAR)
    return np.where(count > 1e-3, total / np.maximum(count, 1e-3), 0).astype(np.float32)


def select_keypoints(response: np.ndarray, conf: LabelConf) -> np.ndarray:
    """NMS + threshold + border + top-k on a response map -> [K, 3] (x, y, score), best first."""
    r = conf.nms_radius
    dilated = cv2.dilate(response, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    keep = (response >= dilated) & (response >= conf.threshold)
    b = conf.image_border_px
    if b > 0:
        keep[:b], keep[-b:], keep[:, :b], keep[:, -b:] = False, False, False, False
    ys, xs = np.nonzero(keep)
    scores = response[ys, xs]
    order = np.argsort(-scores, kind="stable")
    if conf.top_k > 0:
        order = order[: conf.top_k]
    xs, ys, scores = xs[order], ys[order], scores[order]
    if conf.subpixel:
        xs, ys = refine_peaks(response, xs, ys)
    return np.stack([xs, ys, scores], 1).astype(np.float32)


def refine_peaks(response: np.ndarray, xs: np.ndarray, ys: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel positions of local maxima at integer (xs, ys): the vertex of the parabola
    through the maximum and its two neighbours, per axis, clipped to +-0.5 px (no shift on an
    image border or a flat profile)."""
    h, w = response.shape

    def offset(before, centre, after):
        curvature = before - 2 * centre + after
        safe = np.where(curvature < 0, curvature, -1.0)
        return np.where(curvature < 0, np.clip(0.5 * (before - after) / safe, -0.5, 0.5), 0.0)

    xc, yc = np.clip(xs, 1, w - 2), np.clip(ys, 1, h - 2)  # border peaks: no shift below
    centre = response[ys, xs].astype(np.float64)
    dx = offset(response[ys, xc - 1], centre, response[ys, xc + 1])
    dy = offset(response[yc - 1, xs], centre, response[yc + 1, xs])
    return xs + np.where(xc == xs, dx, 0.0), ys + np.where(yc == ys, dy, 0.0)


def label_image(image: np.ndarray, conf: LabelConf, seed_key: int = 0,
                detector: ResponseDetector | None = None) -> np.ndarray:
    """Pseudo-labels [K, 3] (x, y, score) of one uint8 image."""
    rng = np.random.default_rng([conf.seed, seed_key])
    detector = detector or build_detector(conf)
    return select_keypoints(aggregate_response(image, detector, conf, rng), conf)


# Fields added after label caches existed: left out of the cache digest at their defaults.
_LATER_FIELDS = {"subpixel": False, "weights": "", "normalise_percentile": 99.9}


class LabelStore:
    """The cached pseudo-labels of an `ImageCache` (one .npy per image)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / (key.replace("/", "__") + ".npy")

    def load(self, key: str) -> np.ndarray:
        return np.load(self.path(key))


def build_labels(images: ImageCache, conf: LabelConf, cache_dir: str | Path) -> LabelStore:
    """Compute (or reuse) the labels of every cached image; resumable."""
    settings = dataclasses.asdict(conf)
    for name, default in _LATER_FIELDS.items():
        if settings[name] == default:  # the digest of label caches made before the option
            settings.pop(name)
    root = Path(cache_dir) / f"labels-{digest({'images': images.digest, 'conf': settings})}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(settings, indent=1))
    store = LabelStore(root)
    todo = [i for i, k in enumerate(images.keys) if not store.path(k).exists()]
    if todo:
        logger.info("homographic adaptation (%s, %d warps) of %d images -> %s",
                    conf.detector, conf.num_homographies, len(todo), root)
        detector = build_detector(conf)
        for i in track(todo, desc="pseudo-labels"):
            key = images.keys[i]
            labels = label_image(np.asarray(images.image(i)), conf, zlib.crc32(key.encode()),
                                 detector)
            atomic_save_npy(store.path(key), labels)
    return store
