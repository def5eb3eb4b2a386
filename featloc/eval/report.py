"""Writing benchmark outputs: results.json, summary.json and summary.md, the same way for
every benchmark (JSON without NaN/inf, atomic writes, per-pair record caches)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RESULTS, SUMMARY, SUMMARY_MD = "results.json", "summary.json", "summary.md"


def to_jsonable(value):
    """Numpy scalars/arrays to Python, tuples to lists, non-finite floats to None (JSON has
    no inf/NaN: a null error means a failure)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data) -> Path:
    """Write JSON atomically (a temporary file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_cached_records(path: str | Path, key: str = "digest") -> dict[str, dict]:
    """Per-pair records of a previous results.json, keyed by their `key` field; {} when the
    file is missing or unreadable (the records are then recomputed)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {r[key]: r for r in data.get("pairs", []) if r.get(key)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        logger.warning("%s: unreadable, per-pair metrics are recomputed", path)
        return {}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(
    output_dir: str | Path, results: dict, summary: dict, markdown: str
) -> dict[str, Path]:
    """results.json (per-pair records and confs), summary.json and summary.md."""
    output_dir = Path(output_dir)
    paths = {
        "results": write_json(output_dir / RESULTS, results),
        "summary": write_json(output_dir / SUMMARY, summary),
        "summary_md": output_dir / SUMMARY_MD,
    }
    tmp = output_dir / f".{SUMMARY_MD}.tmp"
    tmp.write_text(markdown, encoding="utf-8")
    os.replace(tmp, paths["summary_md"])
    return paths
