"""The matcher interface: two `Features` in, `Matches` out."""

from __future__ import annotations

from dataclasses import dataclass

from ..types import Features, Matches


@dataclass(frozen=True)
class MatcherConf:
    pass


class Matcher:
    """Matches the local features of an image pair.

    Subclasses set `Conf` and implement `_match(features0, features1) -> Matches`; the base
    class handles empty inputs so every matcher returns well-formed results for 0 keypoints.
    """

    Conf = MatcherConf

    def __init__(self, conf: MatcherConf | None = None):
        self.conf = conf if conf is not None else self.Conf()

    def match(self, features0: Features, features1: Features) -> Matches:
        if len(features0) == 0 or len(features1) == 0:
            return Matches.empty(len(features0))
        return self._match(features0, features1)

    def _match(self, features0: Features, features1: Features) -> Matches:
        raise NotImplementedError
