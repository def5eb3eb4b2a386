"""Feature and match files of the localization steps, named after their configuration.

A file name carries a digest of the resolved component configuration, so two steps that
need the same features (e.g. VLAD over RootSIFT and RootSIFT matching) share one file, and a
changed configuration never reads stale entries. Entries are kept up to date by
`run_extract`/`run_match` (per-image and per-pair digests), which makes every step resumable.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from ..batch import BatchReport, digest
from ..config import make_conf, resolve
from ..extract import run_extract
from ..match import run_match

logger = logging.getLogger(__name__)


def resolved_conf(kind: str, name: str, conf: dict | None = None) -> dict:
    """The full configuration of a registered component (preset + overrides), without
    building it (no model weights are loaded)."""
    cls, preset = resolve(kind, name)
    return {"name": name, **dataclasses.asdict(make_conf(cls.Conf, preset, conf or {}))}


def features_file(work_dir: str | Path, features: str, conf: dict | None = None) -> Path:
    return Path(work_dir) / f"feats-{features}-{digest(resolved_conf('extractor', features, conf))}.h5"


def extract_features(
    image_dir: str | Path,
    work_dir: str | Path,
    features: str,
    conf: dict | None,
    names: Sequence[str],
) -> tuple[Path, BatchReport]:
    """Local features of `names` (below `image_dir`) in the work dir's file for this
    configuration; images already stored are skipped."""
    path = features_file(work_dir, features, conf)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = run_extract(image_dir, path, features, conf, names=list(names))
    return path, report


def matches_file(
    work_dir: str | Path, features_path: Path, matcher: str, conf: dict | None, tag: str
) -> Path:
    """Match file for pairs of `tag` ("mapping", "loc", "xy", ...), per features and matcher."""
    mdigest = digest(resolved_conf("matcher", matcher, conf))
    return Path(work_dir) / f"matches-{tag}-{features_path.stem[6:]}_{matcher}-{mdigest}.h5"


def match_pairs(
    pairs: Sequence[tuple[str, str]],
    features_path: Path,
    output: Path,
    matcher: str,
    conf: dict | None,
    features_ref: Path | None = None,
) -> BatchReport:
    """Match the pairs (stored ones are skipped). With `features_ref`, the second image of
    each pair comes from that file (queries vs database)."""
    if not pairs:
        return BatchReport(f"match {matcher}")
    return run_match(features_path, list(pairs), output, matcher, conf,
                     features_ref=None if features_ref == features_path else features_ref)
