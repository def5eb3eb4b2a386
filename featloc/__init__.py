"""featloc: local features, matching, two-view geometry and visual localization.

Public API (stable):
    load_extractor(name, **conf) -> Extractor with .extract(image) -> Features
    load_matcher(name, **conf)   -> Matcher with .match(features0, features1) -> Matches
    load_dense_matcher(name, **conf) -> DenseMatcher with .match(image0, image1)
                                        -> (Features, Features, Matches)
    match_pair(extractor, matcher, image0, image1) -> (Features, Features, Matches)
    Features, Matches, TwoViewEstimate
"""

from .types import Features, Matches, TwoViewEstimate

__version__ = "0.1.0"
__all__ = [
    "Features",
    "Matches",
    "TwoViewEstimate",
    "load_extractor",
    "load_matcher",
    "match_pair",
    "available_extractors",
    "available_matchers",
    "load_dense_matcher",
    "available_dense_matchers",
]


def load_extractor(name: str, **conf):
    """Build the extractor registered as `name` (see `available_extractors()`)."""
    from .config import build

    return build("extractor", name, **conf)


def load_matcher(name: str, **conf):
    """Build the matcher registered as `name` (see `available_matchers()`)."""
    from .config import build

    return build("matcher", name, **conf)


def load_dense_matcher(name: str, **conf):
    """Build the detector-free pair matcher registered as `name` (`samnet`, `coam`; see
    `available_dense_matchers()`)."""
    from .config import build

    return build("dense", name, **conf)


def available_extractors() -> list[str]:
    from .config import available

    return available("extractor")


def available_matchers() -> list[str]:
    from .config import available

    return available("matcher")


def available_dense_matchers() -> list[str]:
    from .config import available

    return available("dense")


def match_pair(extractor, matcher, image0, image1):
    """Extract features from two numpy images and match them."""
    features0 = extractor.extract(image0)
    features1 = extractor.extract(image1)
    return features0, features1, matcher.match(features0, features1)
