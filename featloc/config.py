"""Validated configuration and the one registry of named components.

Every component (extractor, matcher, ...) declares a `Conf` dataclass. `make_conf` merges
user overrides into it with OmegaConf, so an unknown key or a value of the wrong type is an
error that names the key, instead of being silently ignored (the failure mode of plain dict
merging in hloc/LightGlue and of non-strict configs in glue-factory).

The registry maps a public name to "module:Class" plus a preset of conf values. Modules are
imported only when a name is built, so `import featloc` stays light (no torch import).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


_CONF_CACHE: dict[tuple[type, str], Any] = {}
_CONF_CACHE_SIZE = 1024


def make_conf(schema: type[T], *overrides: Mapping[str, Any] | None) -> T:
    """Instantiate the dataclass `schema` from its defaults and `overrides` (later wins).

    Validation through OmegaConf takes ~15 ms, and benchmarks build the same estimator conf
    for every pair (15 of the 100 s of a homography benchmark run), so results are kept per
    schema and overrides (those that JSON can spell) and handed out as copies.

    Raises:
        ConfigError: for unknown keys or values that do not fit the declared types.
    """
    try:
        key = (schema, json.dumps(_plain(overrides), sort_keys=True))
    except TypeError:  # values JSON cannot spell exactly: no caching
        return _make_conf(schema, *overrides)
    if key not in _CONF_CACHE:
        conf = _make_conf(schema, *overrides)
        if len(_CONF_CACHE) >= _CONF_CACHE_SIZE:
            _CONF_CACHE.clear()
        _CONF_CACHE[key] = conf
    return copy.deepcopy(_CONF_CACHE[key])


def _plain(value: Any) -> Any:
    """`value` as JSON types, or TypeError where that would lose a distinction (non-string
    keys, numpy scalars, paths, ...)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):  # OmegaConf reads both as a list
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _make_conf(schema: type[T], *overrides: Mapping[str, Any] | None) -> T:
    merged = OmegaConf.structured(schema)
    for override in overrides:
        if override is None:
            continue
        if dataclasses.is_dataclass(override):
            override = dataclasses.asdict(override)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(override)))
        except OmegaConfBaseException as exc:
            fields = ", ".join(f.name for f in dataclasses.fields(schema))
            msg = str(exc).splitlines()[0]
            raise ConfigError(f"{schema.__qualname__}: {msg} (valid keys: {fields})") from None
    return OmegaConf.to_object(merged)


def conf_to_dict(conf: Any) -> dict[str, Any]:
    return dataclasses.asdict(conf)


# name -> (import path "module:Class", preset conf). Later capabilities add their names here.
_REGISTRY: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "extractor": {
        "sift": ("featloc.features.sift:SIFT", {}),
        "rootsift": ("featloc.features.sift:SIFT", {"rootsift": True}),
        # Localization preset: a 4x lower contrast threshold (COLMAP's SIFT peak threshold is
        # about 2x lower than OpenCV's default) keeps keypoints in dim or low-contrast images
        # (evening / night queries); the strongest 2048 are kept.
        "rootsift-loc": ("featloc.features.sift:SIFT", {"rootsift": True, "contrast_threshold": 0.01}),
        "orb": ("featloc.features.orb:ORB", {}),
        "samfeat": ("featloc.features.samfeat:SAMFeat", {"arch": "vgg"}),
        "samfeat-lite": ("featloc.features.samfeat:SAMFeat", {"arch": "lite"}),
        # Accuracy preset: the published network on six scales (two of them upsampled) with
        # soft-argmax refinement, chosen on held-out BSDS500-val (README, detector section);
        # about 6x the single-scale time.
        "samfeat-ms": ("featloc.features.samfeat:SAMFeat",
                       {"arch": "vgg", "subpixel": True, "scales": (1.41, 1.19, 1.0, 0.84, 0.7, 0.59)}),
    },
    "matcher": {
        "nn": ("featloc.matching.nn:NearestNeighborMatcher", {}),
        "nn-ratio": ("featloc.matching.nn:NearestNeighborMatcher", {"ratio_thresh": 0.8}),
        "nn-dot": ("featloc.matching.nn:NearestNeighborMatcher", {"metric": "dot"}),
        # Attentional matcher (LightGlue-style): shipped featloc/weights/<name>.pt or weights=PATH
        "attention": ("featloc.matching.attention:AttentionMatcher", {}),
        "attention-sift": ("featloc.matching.attention:AttentionMatcher",
                           {"weights": "attention-sift"}),
        "attention-samfeat-lite": ("featloc.matching.attention:AttentionMatcher",
                                   {"weights": "attention-samfeat-lite"}),
    },
    # Detector-free pair matchers (two images in, matched points out), featloc/matching/dense.py:
    # shipped featloc/weights/<name>.pt or weights=PATH.
    "dense": {
        "samnet": ("featloc.matching.dense:DenseMatcher", {"arch": "samnet"}),
        "coam": ("featloc.matching.dense:DenseMatcher", {"arch": "coam"}),
    },
    # Global (image-level) descriptors for retrieval, featloc/loc/retrieval.py.
    "global": {
        "vlad": ("featloc.loc.retrieval:VLAD", {}),
        "gradhist": ("featloc.loc.retrieval:GradientHistogram", {}),
        # learned NetVLAD / GeM over SAMFeat-lite maps: featloc/weights/<name>.pt or weights=PATH
        "netvlad": ("featloc.loc.learned:LearnedGlobal", {"weights": "netvlad-samfeat-lite"}),
        "gem": ("featloc.loc.learned:LearnedGlobal", {"weights": "gem-samfeat-lite"}),
    },
}


def register(kind: str, name: str, target: str, preset: Mapping[str, Any] | None = None):
    """Add (or replace) a named component: `target` is "module:Class"."""
    _REGISTRY.setdefault(kind, {})[name] = (target, dict(preset or {}))


def available(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def resolve(kind: str, name: str) -> tuple[type, dict[str, Any]]:
    """The class and preset registered as `name`."""
    table = _REGISTRY.get(kind)
    if table is None:
        raise ConfigError(f"unknown component kind {kind!r}")
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table))}")
    target, preset = table[name]
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls), dict(preset)


def build(kind: str, name: str, **conf: Any):
    """Instantiate the component registered as `name` with its preset and `conf` overrides."""
    cls, preset = resolve(kind, name)
    return cls(make_conf(cls.Conf, preset, conf))


def resolved_conf(name: str, component: Any) -> dict[str, Any]:
    """The full configuration of a built component, as recorded next to its outputs and hashed
    into their cache keys: the name, every conf field and, for a component with a loaded weights
    file (`weights_file`), a digest of that file's content. With the digest, a file retrained or
    replaced at the same path (or new shipped weights) invalidates cached outputs."""
    resolved = {"name": name, **dataclasses.asdict(component.conf)}
    path = getattr(component, "weights_file", None)
    if path is not None:
        from .batch import file_digest

        resolved["weights_digest"] = file_digest(path)
    return resolved
