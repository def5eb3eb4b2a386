"""Teacher targets (semantic groups, edges, embedding) of the cached training images.

A teacher (`featloc.teachers.build_teacher(conf)`, called as `teacher(image, name)`) is run once
per cached image and its output stored as one `.npz` per image under
`<cache_dir>/teacher-<digest>/`, so that an expensive teacher (SAM) never runs in the data
loader. Outputs are brought to the cached image's size: groups and edges by nearest-neighbour
resizing; the embedding [C, h, w] is kept at its own resolution and is taken to span the image
extent (pixel x of a W-wide image sits at (x + 0.5) * w / W - 0.5 in the embedding).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...progress import track
from .cache import ImageCache, digest

logger = logging.getLogger(__name__)


def build_teacher_from_conf(conf: dict[str, Any]):
    """The teacher of `data.teacher` = {kind: masks|classical|sam, <its conf keys>}
    (imported lazily; replaced by a stub in tests)."""
    from ...teachers import build_teacher

    conf = dict(conf)
    if "kind" not in conf:
        raise ValueError("data.teacher needs 'kind' (masks, classical or sam)")
    return build_teacher(conf.pop("kind"), **conf)


def _resize_nearest(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if array.shape[:2] == hw:
        return array
    return cv2.resize(array, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


class TeacherStore:
    """Cached teacher outputs: `load(key) -> dict` with optional 'groups' int32 [H, W],
    'edges' float32 [H, W] in [0, 1], 'embedding' float16 [C, h, w]."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._embedding_dim: int | None = None

    def path(self, key: str) -> Path:
        return self.root / (key.replace("/", "__") + ".npz")

    @property
    def embedding_dim(self) -> int:
        """Channels of the stored embeddings (0: none), read from the .npy headers only, so
        that images without an embedding can be padded to the same shape."""
        if self._embedding_dim is None:
            self._embedding_dim = 0
            for path in sorted(self.root.glob("*.npz")):
                with zipfile.ZipFile(path) as zf:
                    if "embedding.npy" not in zf.namelist():
                        continue
                    with zf.open("embedding.npy") as f:
                        major, _ = np.lib.format.read_magic(f)
                        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                       else np.lib.format.read_array_header_2_0)
                        shape = read_header(f)[0]
                self._embedding_dim = int(shape[0])
                break
        return self._embedding_dim

    def load(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self.path(key)) as data:
            out = {k: data[k] for k in data.files}
        if "edges" in out:
            out["edges"] = out["edges"].astype(np.float32) / 255.0
        return out


def build_teacher_targets(images: ImageCache, conf: dict[str, Any], cache_dir: str | Path
                          ) -> TeacherStore:
    """Run the teacher on every cached image not yet in the store (resumable, atomic writes).

    The teacher sees each image under its cache key ('<folder name>/<relative path>', e.g.
    'train/100075.jpg' for bsds500/images/train), the name layout of the `masks` teacher's
    cache. An image the teacher has no targets for (FileNotFoundError) is stored without
    targets and trains without the teacher losses.
    """
    root = Path(cache_dir) / f"teacher-{digest({'images': images.digest, 'conf': conf})}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(conf, indent=1, default=str))
    store = TeacherStore(root)
    todo = [i for i, k in enumerate(images.keys) if not store.path(k).exists()]
    if not todo:
        return store
    logger.info("teacher targets for %d images -> %s", len(todo), root)
    teacher = build_teacher_from_conf(dict(conf))
    missing = 0
    for i in track(todo, desc="teacher targets"):
        image = np.ascontiguousarray(images.image(i))
        hw = image.shape[:2]
        try:
            targets = teacher(image, images.keys[i])
        except FileNotFoundError as exc:
            missing += 1
            logger.debug("no teacher targets: %s", exc)
            targets = None
        arrays = {}
        if getattr(targets, "groups", None) is not None:
            arrays["groups"] = _resize_nearest(np.asarray(targets.groups, np.int32), hw)
        if getattr(targets, "edges", None) is not None:
            edges = np.clip(np.asarray(targets.edges, np.float32), 0, 1)
            arrays["edges"] = _resize_nearest((edges * 255 + 0.5).astype(np.uint8), hw)
        if getattr(targets, "embedding", None) is not None:
            arrays["embedding"] = np.asarray(targets.embedding, np.float16)
        path = store.path(images.keys[i])
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    if missing:
        logger.warning("the teacher had no targets for %d of %d images (e.g. no cached masks); "
                       "they train without the teacher losses", missing, len(todo))
    return store


def bilinear_sample(array: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample [C, h, w] at [M, 2] (x, y) pixel positions (pixel-centre convention), zero
    outside -> [C, M] float32."""
    c, h, w = array.shape
    x, y = xy[:, 0], xy[:, 1]
    x0, y0 = np.floor(x), np.floor(y)
    out = np.zeros((c, len(xy)), np.float32)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1) & np.isfinite(weight)
            idx = np.flatnonzero(inside)
            if idx.size:
                vals = array[:, yi[idx].astype(np.int64), xi[idx].astype(np.int64)]
                out[:, idx] += vals.astype(np.float32) * weight[idx].astype(np.float32)
    return out
