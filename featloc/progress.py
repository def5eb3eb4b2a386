"""Progress bars that the CLI's --quiet switches off (tqdm, to stderr)."""

from __future__ import annotations

from tqdm.auto import tqdm

_ENABLED = True


def set_enabled(enabled: bool) -> None:
    global _ENABLED
    _ENABLED = enabled


def is_enabled() -> bool:
    return _ENABLED


def track(iterable, desc: str = "", total: int | None = None, **kwargs):
    return tqdm(iterable, desc=desc, total=total, disable=not _ENABLED, leave=False, **kwargs)
