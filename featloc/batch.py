"""Bookkeeping shared by batch steps: per-item failures that do not stop the run."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What a batch step did. `failures` maps an item to a one-line reason."""

    step: str
    done: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def fail(self, item: str, reason: str) -> None:
        self.failures[item] = reason
        logger.error("%s", reason)

    @property
    def ok(self) -> bool:
        return not self.failures

    def log_summary(self) -> None:
        logger.info("%s: %d done, %d already stored, %d failed",
                    self.step, self.done, self.skipped, len(self.failures))
        if self.failures:
            lines = "\n".join(f"  {item}: {reason}" for item, reason in self.failures.items())
            logger.error("%s: %d item(s) failed:\n%s", self.step, len(self.failures), lines)


def digest(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (to detect changed inputs/configs)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_digest(path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
