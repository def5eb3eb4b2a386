"""On-disk teacher cache: the layout, atomic writers, and the `teach` step that fills it.

Layout below a cache root (the BSDS500 layout of ../shared/data/bsds500, so that folder is
itself a valid cache), for an image named e.g. "train/100075.jpg":

    segments/train/100075.png     16-bit PNG, group ids (0 = no group)
    edges/train/100075.png        8-bit PNG, 255 * edge strength
    embeddings/train/100075.npy   float16 [C, h, w] (optional; the sam teacher writes it)
    teacher.json                  the configuration that produced the cache (written by teach)
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ..batch import BatchReport
from ..io.images import ImageReadError, list_images, read_image
from ..progress import track
from .base import Teacher, TeacherTargets

logger = logging.getLogger(__name__)

CONF_FILE = "teacher.json"
MAX_GROUP_ID = 65535  # 16-bit label PNG


@dataclass(frozen=True)
class CachePaths:
    segments: Path
    edges: Path
    embedding: Path


def cache_paths(root: str | Path, name: str) -> CachePaths:
    """The cache files of image `name` ('/'-separated, relative; its extension is dropped)."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise ValueError(
            f"image name must be a relative path inside the image folder: {name!r}"
        )
    root = Path(root)
    return CachePaths(
        segments=root / "segments" / rel.with_suffix(".png"),
        edges=root / "edges" / rel.with_suffix(".png"),
        embedding=root / "embeddings" / rel.with_suffix(".npy"),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temporary file next to `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _png_bytes(array: np.ndarray, path: Path) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    return buf.tobytes()


def write_targets(root: str | Path, name: str, targets: TeacherTargets) -> list[Path]:
    """Store the targets of image `name` in the cache layout; returns the files written."""
    paths = cache_paths(root, name)
    written = []
    if targets.embedding is not None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(targets.embedding, dtype=np.float16))
        _write_atomic(paths.embedding, buf.getvalue())
        written.append(paths.embedding)
    if targets.edges is not None:
        edges = (np.clip(targets.edges, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        _write_atomic(paths.edges, _png_bytes(edges, paths.edges))
        written.append(paths.edges)
    if targets.groups is not None:
        top = int(targets.groups.max()) if targets.groups.size else 0
        if top > MAX_GROUP_ID:
            raise ValueError(f"{name}: group id {top} does not fit a 16-bit label PNG")
        _write_atomic(
            paths.segments, _png_bytes(targets.groups.astype(np.uint16), paths.segments)
        )
        written.append(paths.segments)
    return written


def _expected_files(paths: CachePaths, provides: frozenset[str]) -> list[Path]:
    keys = {
        "groups": paths.segments,
        "edges": paths.edges,
        "embedding": paths.embedding,
    }
    return [keys[k] for k in sorted(provides)]


def teacher_record(kind: str, teacher: Teacher) -> dict:
    """The settings that determine a cache's content (runtime-only keys left out)."""
    conf = {
        k: v
        for k, v in dataclasses.asdict(teacher.conf).items()
        if k not in teacher.runtime_keys
    }
    return {"teacher": kind, "provides": sorted(teacher.provides), "conf": conf}


def run_teach(
    image_dir: str | Path,
    output: str | Path,
    teacher: str = "classical",
    conf: dict | None = None,
    names: list[str] | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Precompute teacher targets for the images below `image_dir` into the cache `output`.

    Images whose files all exist are skipped (unless `overwrite`), so an interrupted run
    resumes. Every file is written atomically. A cache made with a different teacher
    configuration is refused unless `overwrite` (which recomputes everything). Unreadable
    images are reported and skipped; the rest of the batch goes on.
    """
    from . import build_teacher

    image_dir, output = Path(image_dir), Path(output)
    if names is None:
        names = list_images(image_dir)
    if not names:
        raise ValueError(f"{image_dir}: no image files found")
    model = build_teacher(teacher, **(conf or {}))
    record = teacher_record(teacher, model)
    conf_path = output / CONF_FILE
    if conf_path.exists() and not overwrite:
        previous = json.loads(conf_path.read_text())
        if previous != json.loads(json.dumps(record)):
            raise ValueError(
                f"{output} holds targets of another teacher configuration ({conf_path}: "
                f"{previous}); use --overwrite to recompute them, or another --output"
            )
    _write_atomic(conf_path, (json.dumps(record, indent=2) + "\n").encode())

    report = BatchReport(f"teach {teacher}")
    for name in track(names, desc=f"teach {teacher}"):
        paths = cache_paths(output, name)
        if not overwrite and all(
            p.exists() for p in _expected_files(paths, model.provides)
        ):
            report.skipped += 1
            continue
        try:
            image = read_image(image_dir / name)
        except ImageReadError as exc:
            report.fail(name, str(exc))
            continue
        write_targets(output, name, model(image, name))
        report.done += 1
    report.log_summary()
    return report
