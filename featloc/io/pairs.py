"""Pair lists: text files with one `name0 name1` per line (hloc's format)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class PairsFileError(ValueError):
    """A pairs file is missing, empty or malformed. The message names the file and line."""


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read a pairs file. Extra columns (e.g. ground truth) are ignored; '#' starts a comment.

    Duplicate pairs (in either order) and self-pairs are dropped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found")
    pairs, seen = [], set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            tokens = line.split()
            if len(tokens) < 2:
                raise PairsFileError(
                    f"{path}:{lineno}: expected 'name0 name1', got {line[:80]!r}"
                )
            name0, name1 = tokens[:2]
            if name0 == name1:
                logger.warning("%s:%d: self-pair %s skipped", path, lineno, name0)
                continue
            key = frozenset((name0, name1))
            if key in seen:
                logger.warning("%s:%d: duplicate pair (%s, %s) skipped", path, lineno, name0, name1)
                continue
            seen.add(key)
            pairs.append((name0, name1))
    if not pairs:
        raise PairsFileError(f"{path}: the pairs file lists no pairs")
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[tuple[str, str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")
    tmp.replace(path)
    return path


def pairs_exhaustive(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of distinct names."""
    names = list(dict.fromkeys(names))
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def pairs_sequential(names: Sequence[str], window: int = 5) -> list[tuple[str, str]]:
    """Each name with the next `window` names in the (sorted) sequence."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    names = list(dict.fromkeys(names))
    return [
        (names[i], names[j])
        for i in range(len(names))
        for j in range(i + 1, min(i + 1 + window, len(names)))
    ]
