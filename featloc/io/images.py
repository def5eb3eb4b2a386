"""Reading, normalising and resizing images.

`read_image` returns the image as the user sees it: EXIF orientation applied, 8-bit, gray or
RGB. Keypoints are expressed in the pixels of that array (centre of the top-left pixel at 0,0).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
# Pillow format names accepted for each extension; anything else is a mismatch worth a warning.
_FORMATS = {
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".png": {"PNG"},
    ".ppm": {"PPM"},
    ".pgm": {"PPM"},
    ".bmp": {"BMP"},
    ".tif": {"TIFF"},
    ".tiff": {"TIFF"},
    ".webp": {"WEBP"},
}
MIN_IMAGE_SIDE_PX = 8  # below this no extractor can find a meaningful keypoint


class ImageReadError(ValueError):
    """An image file is missing, unreadable, or unusable. The message names the file."""


def list_images(root: str | Path) -> list[str]:
    """Image files below `root` (recursively), as sorted '/'-separated relative names.

    Files whose extension is not an image extension (e.g. HPatches' H_1_k) are ignored, and so
    are hidden files and folders.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
                continue
            names.append(Path(dirpath, filename).relative_to(root).as_posix())
    return sorted(names)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to uint8 gray (H, W) or RGB (H, W, 3).

    Accepts uint8/uint16/float arrays, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped).
    16-bit images are scaled by 1/257 (full 16-bit range to full 8-bit range); float images are
    taken to be in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3|4), got {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.uint16:
        return np.ascontiguousarray((image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8))
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        return np.ascontiguousarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    if np.issubdtype(image.dtype, np.integer):
        return np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    raise ValueError(f"unsupported image dtype {image.dtype}")


def to_gray(image: np.ndarray) -> np.ndarray:
    image = to_uint8(image)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def to_rgb(image: np.ndarray) -> np.ndarray:
    image = to_uint8(image)
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)


def _pil_to_array(pil: Image.Image) -> np.ndarray:
    if pil.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(pil, dtype=np.uint16)
    if pil.mode == "I":
        array = np.asarray(pil, dtype=np.int64)
        # 32-bit integer images: usually 16-bit data in a wider container.
        return array.clip(0, 65535).astype(np.uint16) if array.max() > 255 else array.astype(np.uint8)
    if pil.mode == "F":
        array = np.asarray(pil, dtype=np.float32)
        hi = float(array.max()) if array.size else 1.0
        return array / hi if hi > 1 else array
    if pil.mode in ("1", "P", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBX"):
        pil = pil.convert("RGBA" if "A" in pil.mode or pil.mode == "P" else "RGB")
    return np.asarray(pil)


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Read an image file as uint8 (H, W) if `grayscale` else (H, W, 3) RGB.

    EXIF orientation is applied. 16-bit and RGBA images are converted. Raises `ImageReadError`
    with a one-line message naming the file for missing, empty, corrupt, truncated or tiny files.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as pil:
            fmt = pil.format
            pil.load()  # decode now: truncated files fail here, not later
            pil = ImageOps.exif_transpose(pil)
            array = _pil_to_array(pil)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (content not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"{path}: cannot decode image ({reason})") from None
    expected = _FORMATS.get(path.suffix.lower())
    if expected is not None and fmt not in expected:
        logger.warning("%s: extension says %s but the content is %s; read as %s",
                       path, path.suffix, fmt, fmt)
    h, w = array.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE_PX:
        raise ImageReadError(
            f"{path}: image too small ({w}x{h} px, at least {MIN_IMAGE_SIDE_PX} px per side)"
        )
    return to_gray(array) if grayscale else to_rgb(array)


def resize_image(
    image: np.ndarray, resize_max: int | None, force: bool = False
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize so that the longer side is `resize_max` (only down, unless `force`).

    Returns the image and the per-axis scale (sx, sy) = new size / old size. A keypoint x in
    the resized image is `(x + 0.5) / sx - 0.5` in the original (pixel-centre convention).
    """
    h, w = image.shape[:2]
    if not resize_max or (max(h, w) <= resize_max and not force):
        return image, (1.0, 1.0)
    ratio = resize_max / max(h, w)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return resized, (new_w / w, new_h / h)


def scale_keypoints(keypoints: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Map keypoints from a resized image (scale = new/old per axis) back to the original."""
    if scale == (1.0, 1.0):
        return keypoints
    s = np.asarray(scale, np.float32)
    return ((keypoints + 0.5) / s - 0.5).astype(np.float32)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 gray or RGB image (format from the extension), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_uint8(image)
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"{path}: could not write image")
