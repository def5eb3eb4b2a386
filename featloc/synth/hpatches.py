"""Build an HPatches-format benchmark from any folder of images.

Each source image gives one sequence folder holding `1.ppm`..`6.ppm` and `H_1_2`..`H_1_6`,
3x3 matrices mapping image-1 pixels to image-k pixels (pixel-centre convention: (0, 0) is the
centre of the top-left pixel, as everywhere in featloc). A seeded shuffle splits the sources
in half: viewpoint sequences `v_<stem>` (random homographies of growing strength, mild
photometric change) and illumination sequences `i_<stem>` (H = I, strong photometric change).

Image 1 is a central crop of the source, and image k samples the *source* through the
homography, so content outside the crop fills the warped views; only areas that fall outside
the source are black.

Everything is deterministic for a given seed: the split depends only on the seed and the
sorted file names, and each sequence draws from its own generator seeded by (seed, name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..batch import BatchReport, digest, file_digest
from ..config import make_conf
from ..geometry.homography import image_corners, warp_points
from ..io.images import ImageReadError, list_images, read_image, write_image
from ..progress import track

logger = logging.getLogger(__name__)

NUM_IMAGES = 6  # HPatches: a reference image and five targets per sequence
MANIFEST = "make_hpatches.json"
_MARKER = ".featloc-synth.json"  # hidden: ignored by image listings and the benchmark


@dataclass(frozen=True)
class SynthConf:
    crop_fraction: float = 0.8  # image 1 = central crop of this fraction of each source side
    min_crop_px: int = 64  # sources whose crop would be smaller than this are rejected
    # Viewpoint geometry at full strength (image 6); image k uses strength (k - 1) / 5, with a
    # random magnitude in [0.5, 1] x strength so that the sequence gets harder on average.
    max_rotation_deg: float = 30.0  # in-plane rotation
    max_scale: float = 1.8  # zoom in or out by up to this factor
    max_perspective: float = 0.45  # projective coefficient, coordinates normalised by half-size
    max_translation: float = 0.1  # shift, as a fraction of the crop size
    min_valid_fraction: float = 0.7  # of image k that must come from inside the source
    min_overlap_fraction: float = 0.4  # of image k that must show image 1's area
    max_area_ratio: float = 4.0  # reject warps that grow or shrink image 1 more than this
    max_tries: int = 200  # homography draws per image before giving up on the source
    # Photometric change: viewpoint images get a mild one, illumination images a strong one.
    mild_gamma: float = 1.1  # gamma in [1/g, g]
    mild_gain: float = 0.1  # contrast 1 +- gain, brightness +- gain / 2 (fraction of 255)
    mild_noise: float = 2.0  # Gaussian noise sigma, grey levels
    strong_gamma: float = 2.0  # gamma in [1/g, g]
    strong_gain: float = 0.35  # contrast 1 +- gain, brightness +- gain / 2
    strong_colour: float = 0.25  # per-channel gain 1 +- this (colour cast)
    strong_shading: float = 0.6  # log-amplitude of a smooth multiplicative shading field
    strong_noise: float = 5.0  # Gaussian noise sigma, grey levels

    def __post_init__(self):
        if not 0.2 <= self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in [0.2, 1], got {self.crop_fraction}")
        if self.max_scale < 1.0 or self.max_area_ratio < 1.0:
            raise ValueError("max_scale and max_area_ratio must be >= 1")
        if not 0 <= self.max_perspective < 0.9:
            raise ValueError(f"max_perspective must be in [0, 0.9), got {self.max_perspective}")
        if self.mild_gamma < 1.0 or self.strong_gamma < 1.0:
            raise ValueError("gamma ranges must be >= 1")


def sequence_rng(seed: int, name: str) -> np.random.Generator:
    """A generator for one sequence, independent of the others and of the processing order
    (Python's `hash` is salted per process, so hash the name with blake2b)."""
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, key])


def split_sources(names: list[str], seed: int) -> dict[str, str]:
    """Assign each name "v" or "i" by a seeded shuffle of the sorted names, half each
    (the extra one of an odd count goes to viewpoint)."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n_view = (len(names) + 1) // 2
    return {names[j]: ("v" if rank < n_view else "i") for rank, j in enumerate(order)}


def _centred(H_norm: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A homography in centred, half-size-normalised coordinates, in pixels."""
    w, h = size
    r = 0.5 * max(w, h)
    N = np.array([[1 / r, 0, -(w - 1) / 2 / r], [0, 1 / r, -(h - 1) / 2 / r], [0, 0, 1]])
    return np.linalg.inv(N) @ H_norm @ N


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _signed_magnitude(rng: np.random.Generator, strength: float, maximum: float) -> float:
    return float(rng.choice([-1.0, 1.0]) * strength * maximum * rng.uniform(0.5, 1.0))


def sample_homography(
    rng: np.random.Generator, size: tuple[int, int], strength: float, conf: SynthConf
) -> np.ndarray:
    """A random H (image 1 -> image k, pixels) for an image of `size` (w, h), before checks:
    perspective, then scale, rotation and translation about the image centre."""
    w, h = size
    r = 0.5 * max(w, h)
    angle = np.deg2rad(_signed_magnitude(rng, strength, conf.max_rotation_deg))
    scale = float(np.exp(_signed_magnitude(rng, strength, np.log(conf.max_scale))))
    direction = rng.uniform(0, 2 * np.pi)
    persp = strength * conf.max_perspective * rng.uniform(0.5, 1.0)
    shift = strength * conf.max_translation * rng.uniform(-1, 1, 2) * np.array([w, h]) / r
    P = np.array([[1, 0, 0], [0, 1, 0], [persp * np.cos(direction), persp * np.sin(direction), 1]])
    c, s = np.cos(angle), np.sin(angle)
    A = np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]], [0, 0, 1]])
    H = _centred(A @ P, size)
    return H / H[2, 2]


def check_homography(
    H: np.ndarray, size: tuple[int, int], source_to_1: np.ndarray, source_size: tuple[int, int],
    conf: SynthConf,
) -> str | None:
    """Why H is unusable (None if fine): a corner goes through infinity, the warped image-1
    quadrilateral is flipped or not convex, its area changes too much, too little of image k
    comes from the source, or too little of it shows image 1's area."""
    w, h = size
    corners = image_corners(size)
    homog = corners @ H[2, :2] + H[2, 2]
    if np.any(homog <= 1e-6):
        # The denominator is affine, so positive at the corners means positive inside.
        return "horizon crosses image 1"
    quad = warp_points(corners, H)
    edges = np.roll(quad, -1, 0) - quad
    cross = edges[:, 0] * np.roll(edges, -1, 0)[:, 1] - edges[:, 1] * np.roll(edges, -1, 0)[:, 0]
    if not np.all(cross > 0):  # corners are clockwise on screen (y down): all turns positive
        return "flipped or non-convex warp"
    ratio = _polygon_area(quad) / _polygon_area(corners)
    if not 1 / conf.max_area_ratio <= ratio <= conf.max_area_ratio:
        return f"area ratio {ratio:.2f}"
    valid = cv2.warpPerspective(
        np.ones(source_size[::-1], np.uint8), H @ source_to_1, size, flags=cv2.INTER_NEAREST
    )
    if valid.mean() < conf.min_valid_fraction:
        return f"only {valid.mean():.0%} of the view inside the source"
    overlap = cv2.warpPerspective(np.ones((h, w), np.uint8), H, size, flags=cv2.INTER_NEAREST)
    if overlap.mean() < conf.min_overlap_fraction:
        return f"only {overlap.mean():.0%} overlap with image 1"
    return None


def _local_scale(H: np.ndarray, size: tuple[int, int]) -> float:
    """Smallest linear magnification of H at the corners and centre of the image."""
    w, h = size
    points = np.vstack([image_corners(size), [[(w - 1) / 2, (h - 1) / 2]]])
    scales = []
    for x, y in points:
        d = H[2, 0] * x + H[2, 1] * y + H[2, 2]
        u = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / d
        v = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / d
        J = (H[:2, :2] - np.outer([u, v], H[2, :2])) / d
        scales.append(np.linalg.svd(J, compute_uv=False)[-1])
    return float(min(scales))


def render_view(source: np.ndarray, H_source_to_k: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Image k: the source sampled through the homography (black outside the source).

    OpenCV's warp treats integer coordinates as pixel centres, the featloc convention. When
    the warp shrinks the content, the source is blurred first so that it does not alias.
    """
    shrink = _local_scale(H_source_to_k, (source.shape[1], source.shape[0]))
    if shrink < 0.9:
        sigma = 0.5 * np.sqrt(1.0 / shrink**2 - 1.0)
        source = cv2.GaussianBlur(source, (0, 0), sigma)
    return cv2.warpPerspective(
        source, H_source_to_k, size, flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def photometric(
    image: np.ndarray, rng: np.random.Generator, strength: float, strong: bool, conf: SynthConf
) -> np.ndarray:
    """A photometric change of an RGB uint8 image; black (outside-source) pixels stay black.

    Strong (illumination): colour cast and smooth shading (the light), then gamma, contrast
    and brightness (the camera response), then noise. Mild (viewpoint): the last three only.
    """
    out = image.astype(np.float32) / 255.0
    h, w = out.shape[:2]
    if strong:
        gains = 1.0 + rng.uniform(-1, 1, 3) * conf.strong_colour * strength
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        xx, yy = xx / max(w, h), yy / max(w, h)
        theta = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(theta) * (xx - xx.mean()) + np.sin(theta) * (yy - yy.mean())
        cx, cy = rng.uniform(0, xx.max()), rng.uniform(0, yy.max())
        sigma = rng.uniform(0.2, 0.5)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        log_shade = conf.strong_shading * strength * (
            rng.uniform(-1, 1) * ramp / max(np.abs(ramp).max(), 1e-6) + rng.uniform(-1, 1) * blob
        )
        out = out * gains * np.exp(log_shade)[..., None]
        gamma, gain, noise = conf.strong_gamma, conf.strong_gain, conf.strong_noise
    else:
        gamma, gain, noise = conf.mild_gamma, conf.mild_gain, conf.mild_noise
    out = np.clip(out, 0, 1) ** np.exp(_signed_magnitude(rng, strength, np.log(gamma)))
    contrast = 1.0 + _signed_magnitude(rng, strength, gain)
    brightness = _signed_magnitude(rng, strength, gain / 2)
    out = (out - 0.5) * contrast + 0.5 + brightness
    out = out * 255.0 + rng.normal(0, noise * max(strength, 0.5), out.shape)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    out[(image == 0).all(-1)] = 0
    return out


def make_sequence(
    source: np.ndarray, kind: str, rng: np.random.Generator, conf: SynthConf
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The six images and five homographies H_1_k (k = 2..6) of one sequence.

    Args:
        source: [H, W, 3] uint8 RGB source image.
        kind: "v" (viewpoint) or "i" (illumination).
    Returns:
        images: 6 arrays [h, w, 3] uint8 (the crop size); homographies: 5 arrays [3, 3].
    Raises:
        ValueError: the source is too small or no valid homography was found.
    """
    sh, sw = source.shape[:2]
    w, h = round(sw * conf.crop_fraction), round(sh * conf.crop_fraction)
    if min(w, h) < conf.min_crop_px:
        raise ValueError(f"image too small ({sw}x{sh} px) for a {conf.min_crop_px} px crop")
    ox, oy = (sw - w) // 2, (sh - h) // 2
    source_to_1 = np.array([[1.0, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    images = [np.ascontiguousarray(source[oy:oy + h, ox:ox + w])]
    homographies = []
    for k in range(2, NUM_IMAGES + 1):
        strength = (k - 1) / (NUM_IMAGES - 1)
        if kind == "i":
            H = np.eye(3)
            # Real illumination sequences are all strongly lit differently: start at half.
            view = photometric(images[0], rng, 0.5 + 0.5 * strength, True, conf)
        else:
            for _ in range(conf.max_tries):
                H = sample_homography(rng, (w, h), strength, conf)
                if check_homography(H, (w, h), source_to_1, (sw, sh), conf) is None:
                    break
            else:
                raise ValueError(f"no valid homography for image {k} in {conf.max_tries} tries")
            view = render_view(source, H @ source_to_1, (w, h))
            view = photometric(view, rng, strength, False, conf)
        images.append(view)
        homographies.append(H)
    return images, homographies


def _write_sequence(folder: Path, images, homographies, marker: dict) -> None:
    for k, image in enumerate(images, 1):
        write_image(folder / f"{k}.ppm", image)
    for k, H in enumerate(homographies, 2):
        np.savetxt(folder / f"H_1_{k}", H, fmt="%.17g")
    (folder / _MARKER).write_text(json.dumps(marker, sort_keys=True), encoding="utf-8")


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a complete folder into place; a reader sees the old or the new one, never a mix."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def make_hpatches(
    images_dir: str | Path,
    output_dir: str | Path,
    seed: int = 0,
    conf: SynthConf | dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Build an HPatches-format benchmark in `output_dir` from the images below `images_dir`.

    Each sequence is written to a hidden temporary folder and renamed when complete, so a
    killed run leaves only complete sequences; a re-run skips those made from the same source
    bytes with the same seed and conf (unless `overwrite`). Unreadable or unusable sources are
    logged, skipped and listed at the end. `output_dir/make_hpatches.json` records the seed,
    the resolved conf, the sequences and the failures.

    Returns:
        `output_dir`.
    """
    images_dir, output_dir = Path(images_dir), Path(output_dir)
    conf = conf if isinstance(conf, SynthConf) else make_conf(SynthConf, conf)
    resolved = dataclasses.asdict(conf)
    names = list_images(images_dir)
    inside = output_dir.resolve()
    # The output may live below the source folder: never take our own images as sources.
    names = [n for n in names if inside not in (images_dir / n).resolve().parents]
    if not names:
        raise ValueError(f"{images_dir}: no image files found")
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    kinds = split_sources(names, seed)
    report = BatchReport("make-hpatches")
    sequences: dict[str, str] = {}
    for name in track(sorted(names), desc="make-hpatches"):
        path = images_dir / name
        stem = Path(name).stem
        kind = kinds[name]
        seq = f"{kind}_{stem}"
        if seq in sequences:
            report.fail(str(path), f"{path}: sequence {seq} already made from {sequences[seq]}")
            continue
        final = output_dir / seq
        try:
            marker = {"digest": digest(resolved, seed, seq, file_digest(path)), "source": name}
        except OSError as exc:
            report.fail(str(path), f"{path}: {exc.strerror or exc}")
            continue
        other = output_dir / f"{'i' if kind == 'v' else 'v'}_{stem}"
        if other.is_dir() and _read_marker(other) is not None:
            shutil.rmtree(other)  # made by us with another split (seed); it would be counted
        if not overwrite and final.is_dir() and _read_marker(final) == marker:
            report.skipped += 1
            sequences[seq] = name
            continue
        try:
            source = read_image(path)
            images, homographies = make_sequence(source, kind, sequence_rng(seed, seq), conf)
        except (ImageReadError, ValueError) as exc:
            msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            report.fail(str(path), msg)
            continue
        tmp = output_dir / f".tmp-{seq}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _write_sequence(tmp, images, homographies, marker)
            _replace_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sequences[seq] = name
        report.done += 1
    report.log_summary()
    manifest = {
        "images_dir": str(images_dir),
        "seed": seed,
        "conf": resolved,
        "sequences": dict(sorted(sequences.items())),
        "failures": report.failures,
    }
    tmp = output_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, output_dir / MANIFEST)
    return output_dir


def read_manifest(output_dir: str | Path) -> dict:
    """The record written by `make_hpatches` (seed, conf, sequences, failures)."""
    return json.loads((Path(output_dir) / MANIFEST).read_text(encoding="utf-8"))
