"""`masks` teacher: reads targets precomputed on disk (by `featloc teach`, or a dataset's own
annotations in the same layout, e.g. ../shared/data/bsds500).

See `featloc.teachers.cache` for the layout. Maps whose size differs from the image are
resized to it: nearest for group ids, bilinear for edges. The embedding is returned at its
stored resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import ConfigError
from .base import Teacher, TeacherTargets
from .cache import cache_paths

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MasksConf:
    root: str = ""  # cache folder holding segments/, edges/ and optionally embeddings/
    # also read embeddings/<stem>.npy when the cache has an embeddings/ folder
    embedding: bool = True


class MasksTeacher(Teacher):
    """Reads `segments/`, `edges/` and (optional) `embeddings/` files of a cache."""

    Conf = MasksConf

    def __init__(self, conf: MasksConf | None = None):
        super().__init__(conf)
        if not self.conf.root:
            raise ConfigError("masks teacher: set root= to the cache folder")
        self.root = Path(self.conf.root)
        for sub in ("segments", "edges"):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(
                    f"teacher cache {self.root}: folder {self.root / sub} not found "
                    "(expected segments/ and edges/, as written by `featloc teach`)"
                )
        provides = {"groups", "edges"}
        if self.conf.embedding and (self.root / "embeddings").is_dir():
            provides.add("embedding")
        self.provides = frozenset(provides)

    def _targets(self, image: np.ndarray, name: str) -> TeacherTargets:
        h, w = image.shape[:2]
        paths = cache_paths(self.root, name)
        segments = _read_map(paths.segments, name)
        if segments.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"{paths.segments}: expected an 8- or 16-bit label PNG, got {segments.dtype}"
            )
        if segments.shape != (h, w):
            logger.debug(
                "%s: resizing %s to the image size %dx%d", name, paths.segments, w, h
            )
            segments = cv2.resize(segments, (w, h), interpolation=cv2.INTER_NEAREST)
        edges = _read_map(paths.edges, name)
        if edges.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"{paths.edges}: expected an 8- or 16-bit PNG, got {edges.dtype}"
            )
        edges = edges.astype(np.float32) / float(np.iinfo(edges.dtype).max)
        if edges.shape != (h, w):
            edges = cv2.resize(edges, (w, h), interpolation=cv2.INTER_LINEAR)
        embedding = None
        if "embedding" in self.provides:
            if not paths.embedding.exists():
                raise FileNotFoundError(
                    f"{name}: teacher embedding {paths.embedding} not found"
                )
            embedding = np.load(paths.embedding)
            if embedding.ndim != 3 or embedding.dtype not in (np.float16, np.float32):
                raise ValueError(
                    f"{paths.embedding}: expected float16/float32 [C, h, w], "
                    f"got {embedding.dtype} {embedding.shape}"
                )
        return TeacherTargets(
            groups=segments.astype(np.int32),
            edges=np.clip(edges, 0.0, 1.0).astype(np.float32, copy=False),
            embedding=embedding,
        )


def _read_map(path: Path, name: str) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{name}: teacher map {path} not found")
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{path}: cannot decode the teacher map")
    if array.ndim != 2:
        raise ValueError(
            f"{path}: expected a single-channel map, got shape {array.shape}"
        )
    return array
