"""Step: (x, y) coordinates of query images from a database of images with known positions
(COMP90086 style, methods.md 6.3).

Pipeline per query: global retrieval of the top-K database images (`featloc.loc.retrieval`),
local matching (any registered extractor and matcher, or a detector-free matcher such as
`samnet` / `coam` that matches each pair directly; cached HDF5 files), geometric
verification with a fundamental matrix (`estimate_fundamental`; the score is its inlier
count n_k, candidates below `min_inliers` are discarded), then the estimate from the
verified neighbours:

- "best" (strategy A, the blog's baseline): the coordinates of argmax_k n_k;
- "weighted-median" (strategy B): per-axis weighted medians of the candidates' x and y with
  weights n_k^p (the L1 metric is minimised by medians); with `cluster_radius` > 0
  (strategy C) only the candidates of the cluster with the largest total weight are used.

Every strategy is computed and logged; the one chosen by `estimator` goes to the output CSV,
the other ones to `<output stem>.<estimator>.csv` beside it. When no candidate verifies, the
top retrieval's coordinates are used and the query is flagged (`fallback: "retrieval"`) in
the JSON log `<output stem>.log.json`, never silently.

CSV files: `id,x,y` with a header; an id is the image file name relative to its folder,
with or without the extension (both are accepted). Predictions use the database CSV's style.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..batch import digest
from ..config import make_conf
from ..eval.report import write_json
from ..geometry.estimators import estimate_fundamental, ransac_conf
from ..io.h5 import FeatureStore, MatchStore
from ..io.images import list_images
from ..match_dense import common_root, is_dense_matcher, run_dense_step
from ..progress import track
from . import DEFAULT_FEATURES, DEFAULT_GLOBAL, DEFAULT_MATCHER
from .cache import extract_features, match_pairs, matches_file, resolved_conf
from .retrieval import GlobalIndex, IndexConf, compute_global, read_global, retrieve

logger = logging.getLogger(__name__)

ESTIMATORS = ("weighted-median", "best")


class CoordinatesFileError(ValueError):
    """A coordinates CSV is missing or malformed. The message names the file and line."""


# -- CSV files ------------------------------------------------------------------------------
def read_xy_csv(path: str | Path) -> dict[str, tuple[float, float]]:
    """Read `id,x,y` rows (a header naming `id`, `x`, `y` is used when present; otherwise
    the first three columns). Returns (x, y) by id, in file order."""
    path = Path(path)
    if not path.is_file():
        raise CoordinatesFileError(f"{path}: coordinates file not found")
    out: dict[str, tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    columns = (0, 1, 2)
    start = 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        if {"id", "x", "y"} <= set(header):
            columns, start = (header.index("id"), header.index("x"), header.index("y")), 1
    for lineno, row in enumerate(rows[start:], start + 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            key = row[columns[0]].strip()
            x, y = float(row[columns[1]]), float(row[columns[2]])
        except (IndexError, ValueError):
            if lineno == 1:  # an unnamed header
                continue
            raise CoordinatesFileError(f"{path}:{lineno}: expected 'id,x,y', got {','.join(row)[:80]!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise CoordinatesFileError(f"{path}:{lineno}: non-finite coordinates for {key!r}")
        if key in out:
            raise CoordinatesFileError(f"{path}:{lineno}: id {key!r} is listed twice")
        out[key] = (x, y)
    return out


def write_xy_csv(path: str | Path, rows: Mapping[str, Sequence[float]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "x", "y"])
        for key, (x, y) in rows.items():
            writer.writerow([key, repr(float(x)), repr(float(y))])
    tmp.replace(path)
    return path


def xy_from_poses(poses: Mapping[str, object], axes: tuple[int, int] = (0, 1)) -> dict[str, tuple[float, float]]:
    """(x, y) per image id from cam_from_world poses: the camera centre projected on the
    ground plane spanned by the world `axes` (x, y of a z-up world, e.g. make-scenes)."""
    return {image_id(n): (float(p.center[axes[0]]), float(p.center[axes[1]]))
            for n, p in sorted(poses.items())}


def image_id(name: str) -> str:
    """The id of an image name: the name without its extension."""
    return name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name


def match_ids(ids: Sequence[str], names: Sequence[str], where: str = "") -> dict[str, str]:
    """Map ids (file names with or without extension) to image names; ids without an image
    are left out. Raises when an id without extension fits several images."""
    by_name = {n: n for n in names}
    by_stem: dict[str, list[str]] = {}
    for n in names:
        by_stem.setdefault(image_id(n), []).append(n)
    out = {}
    for key in ids:
        if key in by_name:
            out[key] = key
        elif key in by_stem:
            if len(by_stem[key]) > 1:
                raise CoordinatesFileError(f"{where}: id {key!r} fits several images: {by_stem[key]}")
            out[key] = by_stem[key][0]
    return out


# -- estimators ----------------------------------------------------------------------------------
def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median (the midpoint of the two middle values when the weight splits
    exactly in half, so equal weights give the ordinary median)."""
    values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    if len(values) == 0 or weights.sum() <= 0:
        raise ValueError("weighted median of an empty set")
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    half = cum[-1] / 2
    k = int(np.searchsorted(cum, half - 1e-12 * cum[-1]))
    if abs(cum[k] - half) <= 1e-12 * cum[-1] and k + 1 < len(v):
        return float((v[k] + v[k + 1]) / 2)
    return float(v[k])


def best_cluster(positions: np.ndarray, weights: np.ndarray, radius: float) -> np.ndarray:
    """Indices of the candidates within `radius` (Euclidean) of the candidate whose
    neighbourhood has the largest total weight (strategy C)."""
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    members = dist <= radius
    mass = members.astype(np.float64) @ np.asarray(weights, np.float64)
    return np.flatnonzero(members[int(np.argmax(mass))])


def estimate_xy(
    positions: np.ndarray, inliers: np.ndarray, weight_power: float = 1.0, cluster_radius: float = 0.0
) -> dict[str, tuple[float, float]]:
    """All estimates from verified candidates: [K, 2] positions and [K] inlier counts.

    Returns {"best": (x, y), "weighted-median": (x, y)} (see the module doc).
    """
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    inliers = np.asarray(inliers, np.float64).reshape(-1)
    weights = inliers**weight_power
    keep = np.arange(len(positions))
    if cluster_radius > 0:
        keep = best_cluster(positions, weights, cluster_radius)
    median = (weighted_median(positions[keep, 0], weights[keep]),
              weighted_median(positions[keep, 1], weights[keep]))
    best = positions[int(np.argmax(inliers))]
    return {"best": (float(best[0]), float(best[1])), "weighted-median": median}


# -- the step ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XYConf:
    num_matched: int = 20  # retrieved database candidates per query (methods 6.3: 20-50)
    min_inliers: int = 15  # a candidate verifies with at least this many F-matrix inliers
    weight_power: float = 1.0  # weights n_k^p of the weighted median (p in [1, 2])
    cluster_radius: float = 0.0  # > 0: weighted median over the best cluster only (map units)
    estimator: str = "weighted-median"  # weighted-median | best: the one written to the CSV
    ransac_th_px: float = 2.0  # epipolar distance threshold of the verification
    ransac_confidence: float = 0.999
    ransac_method: str = "usac_magsac"
    seed: int = 0  # RANSAC seed
    index: str = "flat"  # faiss index: flat | ivf | hnsw

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.num_matched < 1:
            raise ValueError(f"num_matched must be >= 1, got {self.num_matched}")


def verify_pair(features0, features1, matches, conf: XYConf) -> int:
    """Inlier count of a fundamental matrix fitted to the matches (0 on failure)."""
    points0, points1 = matches.matched_points(features0, features1)
    if len(points0) < max(8, conf.min_inliers):
        return 0
    est = estimate_fundamental(points0, points1, ransac_conf(
        backend="opencv", method=conf.ransac_method, threshold_px=conf.ransac_th_px,
        confidence=conf.ransac_confidence, seed=conf.seed))
    return est.num_inliers if est.success else 0


def _match_dense(query_dir: Path, db_dir: Path, work_dir: Path, pairs, matcher: str,
                 matcher_conf: dict | None):
    """Match (query, db) pairs with a detector-free matcher. Its keypoint and match files
    name images relative to the two folders' common root; returns them and the two name
    mappings (query / db name -> stored name)."""
    root, qkey, dkey = common_root(query_dir, db_dir)
    *_, feats_path, matches_path, _, _ = run_dense_step(
        root, [(qkey(q), dkey(d)) for q, d in pairs], work_dir, matcher, matcher_conf)
    return feats_path, matches_path, qkey, dkey


def run_localize_xy(
    db_dir: str | Path,
    db_csv: str | Path,
    query_dir: str | Path,
    output: str | Path,
    work_dir: str | Path | None = None,
    features: str = DEFAULT_FEATURES,
    matcher: str = DEFAULT_MATCHER,
    extractor_conf: dict | None = None,
    matcher_conf: dict | None = None,
    global_name: str = DEFAULT_GLOBAL,
    global_conf: dict | None = None,
    conf: XYConf | dict | None = None,
    query_names: Sequence[str] | None = None,
) -> Path:
    """Predict (x, y) for every query image; write the CSV `output` and its JSON log.

    Args:
        db_dir: database images; db_csv: their `id,x,y` (images without a row are unused).
        query_dir: query images (all of them, or `query_names`).
        work_dir: cache of features, matches and descriptors (default `<output stem>-work`).
    Returns:
        The CSV path. Queries that could not be read are listed in the log, not predicted.
    """
    conf = conf if isinstance(conf, XYConf) else make_conf(XYConf, conf)
    db_dir, query_dir, output = Path(db_dir), Path(query_dir), Path(output)
    work_dir = Path(work_dir) if work_dir is not None else output.with_name(f"{output.stem}-work")
    tic = time.perf_counter()
    coords = read_xy_csv(db_csv)
    if not coords:
        raise ValueError(f"{db_csv}: the database has no coordinates (empty CSV)")
    all_db = list_images(db_dir)
    if not all_db:
        raise ValueError(f"{db_dir}: the database is empty (no images)")
    id_to_name = match_ids(list(coords), all_db, str(db_csv))
    if not id_to_name:
        raise ValueError(f"{db_csv}: no id matches an image of {db_dir}")
    unmatched = len(coords) - len(id_to_name)
    if unmatched:
        logger.warning("%s: %d ids have no image in %s (ignored)", db_csv, unmatched, db_dir)
    xy_of = {id_to_name[k]: coords[k] for k in id_to_name}
    db_names = sorted(xy_of)
    with_ext = sum(k == n for k, n in id_to_name.items()) > len(id_to_name) / 2
    queries = list_images(query_dir) if query_names is None else list(query_names)
    if not queries:
        raise ValueError(f"{query_dir}: no query images")

    # Retrieval.
    db_global = compute_global(db_dir, work_dir / "db", global_name, global_conf, db_names)
    if not db_global.names:
        raise ValueError(f"{db_dir}: no readable database image")
    q_global = compute_global(query_dir, work_dir / "query", global_name, global_conf, queries,
                              state=db_global.state)
    index = GlobalIndex(read_global(db_global.descriptors, db_global.names), db_global.names,
                        IndexConf(kind=conf.index))
    retrieved = retrieve(read_global(q_global.descriptors, q_global.names), q_global.names, index,
                         conf.num_matched)
    # Local features and matching.
    pairs = [(q, d) for q, hits in retrieved.items() for d, _ in hits]
    dense = is_dense_matcher(matcher)
    if dense:
        q_feats, matches_path, qkey, dkey = _match_dense(
            query_dir, db_dir, work_dir, pairs, matcher, matcher_conf)
        db_feats, failed = q_feats, dict(q_global.report.failures)
    else:
        db_feats, _ = extract_features(db_dir, work_dir / "db", features, extractor_conf, db_names)
        q_feats, q_report = extract_features(query_dir, work_dir / "query", features,
                                             extractor_conf, queries)
        matches_path = matches_file(work_dir, q_feats, matcher, matcher_conf, "xy")
        match_pairs(pairs, q_feats, matches_path, matcher, matcher_conf, features_ref=db_feats)
        qkey = dkey = str
        failed = {**q_report.failures, **q_global.report.failures}
    predictions: dict[str, dict[str, tuple[float, float]]] = {e: {} for e in ESTIMATORS}
    records = []
    with FeatureStore(q_feats, "r") as qstore, FeatureStore(db_feats, "r") as dstore, \
            MatchStore(matches_path, "r") if pairs else _NoMatches() as mstore:
        for qname in track(queries, desc="localize-xy"):
            if qname not in retrieved or qkey(qname) not in qstore:
                records.append({"query": qname, "status": "failed",
                                "reason": failed.get(qname, "no features or global descriptor")})
                continue
            fq = qstore.read(qkey(qname))
            candidates = []
            for dname, score in retrieved[qname]:
                n_inl, n_matches = 0, 0
                if dkey(dname) in dstore and mstore.find_pair(qkey(qname), dkey(dname)):
                    fd = dstore.read(dkey(dname))
                    m = mstore.read(qkey(qname), dkey(dname), len(fq))
                    n_matches = len(m)
                    n_inl = verify_pair(fq, fd, m, conf)
                candidates.append({"db": dname, "x": xy_of[dname][0], "y": xy_of[dname][1],
                                   "retrieval_score": score, "num_matches": n_matches,
                                   "num_inliers": n_inl, "verified": n_inl >= conf.min_inliers})
            verified = [c for c in candidates if c["verified"]]
            if verified:
                estimates = estimate_xy([(c["x"], c["y"]) for c in verified],
                                        [c["num_inliers"] for c in verified],
                                        conf.weight_power, conf.cluster_radius)
                fallback = None
            else:
                top = candidates[0]
                estimates = dict.fromkeys(ESTIMATORS, (top["x"], top["y"]))
                fallback = "retrieval"
            key = qname if with_ext else image_id(qname)
            for e in ESTIMATORS:
                predictions[e][key] = estimates[e]
            records.append({"query": qname, "id": key, "status": "fallback" if fallback else "verified",
                            "fallback": fallback, "num_verified": len(verified),
                            "estimates": {e: list(v) for e, v in estimates.items()},
                            "candidates": candidates})
    write_xy_csv(output, predictions[conf.estimator])
    for e in ESTIMATORS:
        if e != conf.estimator:
            write_xy_csv(output.with_name(f"{output.stem}.{e}.csv"), predictions[e])
    fallbacks = [r["query"] for r in records if r["status"] == "fallback"]
    failures = [r["query"] for r in records if r["status"] == "failed"]
    if fallbacks:
        logger.warning("%d of %d queries had no verified neighbour: top-retrieval fallback "
                       "(flagged in the log)", len(fallbacks), len(queries))
    if failures:
        logger.error("%d queries could not be processed (see the log)", len(failures))
    summary = {
        "num_queries": len(queries), "num_verified": len(records) - len(fallbacks) - len(failures),
        "num_fallback": len(fallbacks), "num_failed": len(failures),
        "fallback_queries": fallbacks, "failed_queries": failures,
        "seconds": round(time.perf_counter() - tic, 3),
    }
    write_json(output.with_name(f"{output.stem}.log.json"), {
        "step": "localize-xy", "summary": summary,
        "confs": {"xy": dataclasses.asdict(conf),
                  "extractor": ({"name": "dense"} if dense
                                else resolved_conf("extractor", features, extractor_conf)),
                  "matcher": resolved_conf("dense" if dense else "matcher", matcher,
                                           matcher_conf),
                  "global": {"name": global_name, **(global_conf or {})}},
        "inputs": {"db_dir": db_dir, "db_csv": db_csv, "query_dir": query_dir,
                   "work_dir": work_dir, "digest": digest(db_names, queries)},
        "outputs": {e: str(output if e == conf.estimator else output.with_name(f"{output.stem}.{e}.csv"))
                    for e in ESTIMATORS},
        "queries": records,
    })
    logger.info("localize-xy: %d queries, %d verified, %d fallback, %d failed -> %s",
                len(queries), summary["num_verified"], len(fallbacks), len(failures), output)
    return output


class _NoMatches:
    """Stands in for a match file when there is nothing to match."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def find_pair(self, *names):
        return None
