"""Step: match the features of every listed pair into an HDF5 match file."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

from .batch import BatchReport, digest
from .config import build, resolved_conf
from .io.h5 import FeatureStore, MatchStore, conf_attrs
from .io.pairs import read_pairs
from .progress import track
from .types import Features

logger = logging.getLogger(__name__)


class _FeatureCache:
    """A small LRU over a feature file (pairs lists revisit the same images)."""

    def __init__(self, store: FeatureStore, size: int = 64):
        self.store, self.size, self.items = store, size, OrderedDict()

    def get(self, name: str) -> Features:
        if name in self.items:
            self.items.move_to_end(name)
            return self.items[name]
        features = self.store.read(name)
        self.items[name] = features
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return features


def _check_trained_features(model, matcher: str, fstore: FeatureStore) -> None:
    """Warn when a learned matcher meets features of another extractor than it was trained on:
    descriptors of the same size (SIFT and SAMFeat are both 128-d) pass the shape check but
    give meaningless matches."""
    trained = getattr(model, "trained_features", None)
    try:
        used = json.loads(fstore.attrs.get("conf", "{}")).get("name")
    except (TypeError, ValueError):
        used = None
    if trained and used and used != trained:
        logger.warning("matcher %s was trained on %s features, %s holds %s features: the "
                       "matches may be meaningless (use the matcher trained for %s)",
                       matcher, trained, fstore.path, used, used)


def run_match(
    features: str | Path,
    pairs: str | Path | list[tuple[str, str]],
    output: str | Path,
    matcher: str = "nn",
    conf: dict | None = None,
    overwrite: bool = False,
    features_ref: str | Path | None = None,
) -> BatchReport:
    """Match every pair of `pairs` (a pairs file or a list) with features from `features`.

    A pair already stored (in either order) with the same matcher configuration and the same
    features is skipped unless `overwrite`. Pairs naming an image missing from the feature
    file are reported and skipped. With `features_ref` (hloc's `features_ref`), the second
    image of every pair is read from that file instead (e.g. queries in `features`, database
    images in `features_ref`), and pairs are stored in the (name0, name1) order.
    """
    model = build("matcher", matcher, **(conf or {}))
    resolved = resolved_conf(matcher, model)
    conf_digest = digest(resolved)
    pair_list = read_pairs(pairs) if isinstance(pairs, str | Path) else list(pairs)
    report = BatchReport(f"match {matcher}")
    extra = {} if features_ref is None else {"features_ref": str(features_ref)}
    with FeatureStore(features, "r") as fstore, MatchStore(
        output, "a", attrs=conf_attrs(resolved, features=str(features), **extra)
    ) as mstore, (
        FeatureStore(features_ref, "r") if features_ref is not None else nullcontext(fstore)
    ) as rstore:
        _check_trained_features(model, matcher, fstore)
        cache = _FeatureCache(fstore)
        rcache = cache if rstore is fstore else _FeatureCache(rstore)
        for name0, name1 in track(pair_list, desc=f"match {matcher}"):
            missing = [n for s, n in ((fstore, name0), (rstore, name1)) if n not in s]
            if missing:
                where = features if features_ref is None else f"{features} | {features_ref}"
                report.fail(f"{name0} {name1}", f"{where}: no features for {', '.join(missing)}")
                continue
            entry_digest = digest(
                conf_digest,
                fstore.entry_attrs(name0).get("digest"),
                rstore.entry_attrs(name1).get("digest"),
            )
            found = mstore.find_pair(name0, name1)
            if found and not overwrite and mstore.entry_attrs(found[0]).get("digest") == entry_digest:
                report.skipped += 1
                continue
            if found and found[1] and rstore is fstore:
                name0, name1 = name1, name0  # replace the stored orientation in place
            matches = model.match(cache.get(name0), rcache.get(name1))
            mstore.write(name0, name1, matches, attrs={"digest": entry_digest})
            report.done += 1
    report.log_summary()
    return report
