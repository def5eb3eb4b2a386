"""Decode training images once into a uint8 memmap so that the data loader never decodes JPEGs.

Layout of a cache folder `<cache_dir>/images-<digest>/`: `images.u8` (all images, RGB, row-major,
concatenated) and `index.json` (keys, names, folders, shapes, offsets). The digest covers the
folders, file names, sizes and modification times, and the resize setting, so a changed image
set gets a new cache. `index.json` is written last (atomically): its presence marks a complete
cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ...io.images import ImageReadError, list_images, read_image, resize_image
from ...progress import track

logger = logging.getLogger(__name__)


def digest(obj) -> str:
    """Short stable hash of a JSON-serialisable object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class ImageCache:
    """Read-only access to a built cache; safe to pickle into DataLoader workers (the memmap is
    opened lazily in each process)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        index = json.loads((self.root / "index.json").read_text())
        self.digest = index["digest"]
        self.keys: list[str] = index["keys"]
        self.names: list[str] = index["names"]
        self.folders: list[str] = index["folders"]
        self.shapes = np.asarray(index["shapes"], np.int64).reshape(-1, 3)
        self.offsets = np.asarray(index["offsets"], np.int64)
        self._data = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def image(self, i: int) -> np.ndarray:
        """Image i as a read-only uint8 (H, W, 3) RGB array."""
        if self._data is None:
            self._data = np.memmap(self.root / "images.u8", np.uint8, mode="r")
        h, w, c = self.shapes[i]
        start = self.offsets[i]
        return self._data[start:start + h * w * c].reshape(h, w, c)


def _source_list(image_dirs: list[str]) -> tuple[list[tuple[str, str, str]], list]:
    """[(key, folder, name)] over all folders, plus the file facts that enter the digest."""
    entries, facts = [], []
    bases = [Path(d).name for d in image_dirs]
    unique = len(set(bases)) == len(bases)
    for i, folder in enumerate(image_dirs):
        folder_path = Path(folder)
        if not folder_path.is_dir():
            raise FileNotFoundError(f"training image folder not found: {folder} (data.image_dirs)")
        names = list_images(folder_path)
        if not names:
            raise FileNotFoundError(f"no images in training folder {folder} (data.image_dirs)")
        prefix = bases[i] if unique else f"{i}-{bases[i]}"
        for name in names:
            st = (folder_path / name).stat()
            entries.append((f"{prefix}/{name}", str(folder_path), name))
            facts.append((str(folder_path.resolve()), name, st.st_size, st.st_mtime_ns))
    return entries, facts


def build_image_cache(image_dirs: list[str], cache_dir: str | Path, max_side: int) -> ImageCache:
    """Decode (and downsize so the longer side is <= max_side) every image once; reuse the cache
    when it exists. Unreadable images are skipped with a warning."""
    entries, facts = _source_list(list(image_dirs))
    return cache_image_files(entries, facts, cache_dir, max_side)


def cache_image_files(entries: list[tuple[str, str, str]], facts: list, cache_dir: str | Path,
                      max_side: int, extra: dict | None = None) -> ImageCache:
    """The cache of explicitly listed images: `entries` [(key, folder, name)], `facts` (what
    identifies the files: path, size, mtime) and `extra` enter the digest. Unreadable images
    are skipped with a warning."""
    key = digest({"files": facts, "max_side": max_side, "version": 1, **(extra or {})})
    root = Path(cache_dir) / f"images-{key}"
    if (root / "index.json").exists():
        return ImageCache(root)
    root.mkdir(parents=True, exist_ok=True)
    keys, names, folders, shapes, offsets = [], [], [], [], []
    offset = 0
    tmp = root / "images.u8.tmp"
    with open(tmp, "wb") as f:
        for k, folder, name in track(entries, desc="decoding training images"):
            try:
                image = read_image(Path(folder) / name)
            except ImageReadError as exc:
                logger.warning("skipping %s", exc)
                continue
            image, _ = resize_image(image, max_side)
            image = np.ascontiguousarray(image, np.uint8)
            f.write(image.tobytes())
            keys.append(k)
            names.append(name)
            folders.append(folder)
            shapes.append(list(image.shape))
            offsets.append(offset)
            offset += image.size
    if not keys:
        raise FileNotFoundError("no readable training images in "
                                f"{sorted({folder for _, folder, _ in entries})}")
    os.replace(tmp, root / "images.u8")
    index = {"digest": key, "keys": keys, "names": names, "folders": folders,
             "shapes": shapes, "offsets": offsets, "max_side": max_side}
    tmp_index = root / "index.json.tmp"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, root / "index.json")
    logger.info("cached %d training images (%.1f MB) in %s", len(keys), offset / 1e6, root)
    return ImageCache(root)
