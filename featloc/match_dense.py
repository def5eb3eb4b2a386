"""Step: match every listed image pair with a detector-free matcher into the same keypoint
and match files as the sparse pipeline (hloc layout).

Dense matchers give matched points per *pair*, while the feature/match files need one
keypoint list per *image* that every pair indexes (hloc's `match_dense` approach):

1. match (resumable, the costly part): each pair's points and scores go to a raw store
   `<matches>.dense-raw.h5` (one group per pair, tagged with a digest of the matcher
   configuration and of both image files), so an interrupted or extended run only matches
   pairs it has not seen;
2. aggregate (cheap, from the raw store; every pair stored there, so the files stay
   consistent when pairs are added): the points of each image over all its pairs are
   quantised to a `cell_px` grid; points in one cell merge into one keypoint at their mean
   position with the best score. Each pair then becomes `matches0` over those keypoints (a
   keypoint matched twice in one pair keeps its best match).

Keypoints (float32, original pixels) go to the features file with empty [N, 0] descriptors;
match entries are tagged with a digest of the pair's raw points and both keypoint lists, so
the benchmarks' result caches notice any change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict, defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .batch import BatchReport, digest, file_digest
from .config import available, build, resolved_conf
from .io.h5 import AtomicH5, FeatureStore, MatchStore, conf_attrs, names_to_pair
from .io.images import ImageReadError, read_image
from .io.pairs import read_pairs
from .progress import track
from .types import Features, Matches

logger = logging.getLogger(__name__)

RAW_SUFFIX = ".dense-raw.h5"


def is_dense_matcher(name: str) -> bool:
    """Whether `name` is a registered detector-free (image pair) matcher."""
    return name in available("dense")


def raw_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name.removesuffix(".h5") + RAW_SUFFIX)


def default_features_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name.removesuffix(".h5") + "-keypoints.h5")


class PairPointsStore(AtomicH5):
    """Raw dense matches per pair (crash-safe like the other stores): `points0`, `points1`
    [K, 2] float32 original pixels, `scores` [K] float32, `image_size0/1` (w, h); the group
    attribute `digest` identifies the inputs and `names` the two image names."""

    leaf_key = "points0"

    def write(self, name0: str, name1: str, points: dict, attrs: dict) -> None:
        data = {
            "points0": np.asarray(points["keypoints0"], np.float32).reshape(-1, 2),
            "points1": np.asarray(points["keypoints1"], np.float32).reshape(-1, 2),
            "scores": np.asarray(points["scores"], np.float32).reshape(-1),
            "image_size0": np.asarray(points["image_size0"], np.int64),
            "image_size1": np.asarray(points["image_size1"], np.int64),
        }
        self._put(names_to_pair(name0, name1), data, {**attrs, "name0": name0, "name1": name1})

    def read(self, key: str) -> dict:
        return dict(self._group(key))


class _ImageCache:
    """A few decoded images (pairs lists revisit the same images)."""

    def __init__(self, root: Path, size: int = 16):
        self.root, self.size, self.items = root, size, OrderedDict()

    def get(self, name: str) -> np.ndarray:
        if name not in self.items:
            self.items[name] = read_image(self.root / name)
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(name)
        return self.items[name]


def _hash_array(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=8)
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def quantise_keypoints(points: np.ndarray, scores: np.ndarray, cell_px: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge [P, 2] points falling in the same `cell_px` grid cell.

    Returns keypoints [N, 2] float32 (mean position per cell, cells in sorted order),
    keypoint scores [N] (best score per cell) and the keypoint index of every point [P].
    """
    if len(points) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    cells = np.floor((points.astype(np.float64) + 0.5) / cell_px).astype(np.int64)
    unique, index = np.unique(cells, axis=0, return_inverse=True)
    index = index.reshape(-1)
    n = len(unique)
    sums = np.zeros((n, 2))
    np.add.at(sums, index, points.astype(np.float64))
    counts = np.bincount(index, minlength=n)
    best = np.full(n, -np.inf)
    np.maximum.at(best, index, scores.astype(np.float64))
    return (sums / counts[:, None]).astype(np.float32), best.astype(np.float32), index


def pair_matches(index0: np.ndarray, index1: np.ndarray, scores: np.ndarray,
                 num_keypoints0: int) -> Matches:
    """Matches over per-image keypoints from per-match keypoint indices; a keypoint of
    image 0 matched more than once keeps its best-scoring match."""
    order = np.argsort(scores, kind="stable")  # ascending: the best match is written last
    out = Matches.empty(num_keypoints0)
    out.matches0[index0[order]] = index1[order]
    out.matching_scores0[index0[order]] = scores[order]
    return out


def run_match_dense(
    pairs: str | Path | list[tuple[str, str]],
    image_dir: str | Path,
    output: str | Path,
    matcher: str = "samnet",
    conf: dict | None = None,
    features_output: str | Path | None = None,
    overwrite: bool = False,
    cell_px: float = 1.0,
    model=None,
) -> BatchReport:
    """Match every pair with a dense matcher; write keypoints and matches (module docstring).

    Args:
        pairs: a pairs file or a list of (name0, name1) below `image_dir`.
        output: the match file (.h5); the raw per-pair store lies next to it.
        matcher: a registered dense matcher name; conf: its overrides.
        features_output: the keypoint file; default `<output stem>-keypoints.h5`.
        overwrite: re-match pairs already in the raw store.
        cell_px: keypoint quantisation grid (px): points of an image closer than this merge.
        model: the matcher already built from (matcher, conf) (saves loading it twice).
    Returns:
        The report of the matching phase (failed pairs name the unreadable image).
    """
    image_dir, output = Path(image_dir), Path(output)
    features_output = Path(features_output) if features_output else default_features_path(output)
    if cell_px <= 0:
        raise ValueError(f"cell_px must be > 0, got {cell_px}")
    if model is None:
        model = build("dense", matcher, **(conf or {}))
    resolved = resolved_conf(matcher, model)
    pair_list = read_pairs(pairs) if isinstance(pairs, str | Path) else list(pairs)
    report = match_raw(pair_list, image_dir, raw_path(output), model, resolved, overwrite)
    aggregate(raw_path(output), output, features_output, cell_px, resolved, overwrite)
    report.log_summary()
    return report


def match_raw(pair_list: list[tuple[str, str]], image_dir: Path, raw_file: Path, model,
              resolved: dict, overwrite: bool = False) -> BatchReport:
    """Phase 1 (resumable): each pair's matched points and scores into the raw store, skipping
    pairs stored with the same matcher configuration and image files (in either order)."""
    name, image_dir = resolved["name"], Path(image_dir)
    conf_digest = digest(resolved)
    report = BatchReport(f"match-dense {name}")
    images = _ImageCache(image_dir)
    sources: dict[str, str] = {}

    def source(n: str) -> str:
        if n not in sources:
            sources[n] = file_digest(image_dir / n)
        return sources[n]

    with PairPointsStore(raw_file, "a", attrs=conf_attrs(resolved)) as raw:
        for name0, name1 in track(pair_list, desc=f"match-dense {name}"):
            try:
                entry_digest = digest(conf_digest, source(name0), source(name1))
            except OSError as exc:
                report.fail(f"{name0} {name1}", f"{exc.filename}: {exc.strerror or exc}")
                continue
            if not overwrite and _stored(raw, name0, name1, entry_digest) or (
                    not overwrite and _stored(raw, name1, name0,
                                              digest(conf_digest, source(name1), source(name0)))):
                report.skipped += 1  # also when stored in the other order
                continue
            try:
                image0, image1 = images.get(name0), images.get(name1)
            except ImageReadError as exc:
                report.fail(f"{name0} {name1}", str(exc))
                continue
            raw.write(name0, name1, model.match_points(image0, image1),
                      {"digest": entry_digest})
            report.done += 1
    return report


def aggregate(raw_file: Path, output: Path, features_output: Path, cell_px: float,
              resolved: dict, overwrite: bool = False) -> None:
    """Keypoints per image and matches per pair from every pair of the raw store."""
    if not Path(raw_file).exists():
        return
    with PairPointsStore(raw_file, "r") as raw:
        keys = sorted(raw.names())
        entries = {k: raw.entry_attrs(k) for k in keys}
        state = digest(cell_px, [(k, entries[k].get("digest")) for k in keys])
        files = (output, features_output)
        if not overwrite and all(p.exists() for p in files) and all(
                _file_attr(p, "dense_digest") == state for p in files):
            logger.info("%s: keypoints and matches up to date", output)
            return
        stored = {k: raw.read(k) for k in keys}
    points, scores, sizes = defaultdict(list), defaultdict(list), {}
    for k in keys:
        n0, n1 = _names(entries[k])
        for i, n in ((0, n0), (1, n1)):
            points[n].append(stored[k][f"points{i}"])
            scores[n].append(stored[k]["scores"])
            sizes[n] = tuple(int(v) for v in stored[k][f"image_size{i}"])
    keypoints, offsets = {}, {}
    for n in sorted(points):
        kpts, kscores, index = quantise_keypoints(np.concatenate(points[n]),
                                                  np.concatenate(scores[n]), cell_px)
        keypoints[n] = (kpts, kscores)
        bounds = np.cumsum([0] + [len(p) for p in points[n]])
        offsets[n] = [index[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    position = defaultdict(int)  # which of an image's point lists comes next (keys order)
    extra = {"dense_digest": state, "cell_px": cell_px}
    with FeatureStore(features_output, "a", attrs=conf_attrs(resolved, **extra)) as fstore:
        for n, (kpts, kscores) in keypoints.items():
            fstore.write(n, Features(kpts, kscores, np.zeros((len(kpts), 0), np.float32),
                                     sizes[n]), attrs={"digest": _hash_array(kpts)})
    with MatchStore(output, "a", attrs=conf_attrs(
            resolved, features=str(features_output), **extra)) as mstore:
        for k in keys:
            n0, n1 = _names(entries[k])
            idx0 = offsets[n0][position[n0]]
            position[n0] += 1
            idx1 = offsets[n1][position[n1]]
            position[n1] += 1
            matches = pair_matches(idx0, idx1, stored[k]["scores"], len(keypoints[n0][0]))
            tag = digest(entries[k].get("digest"), _hash_array(keypoints[n0][0]),
                         _hash_array(keypoints[n1][0]), cell_px)
            mstore.write(n0, n1, matches, attrs={"digest": tag})
    logger.info("%s: %d images, %d pairs", output, len(keypoints), len(keys))


def common_root(dir0: str | Path, dir1: str | Path):
    """(root, name0 -> stored name, name1 -> stored name) for pairs across two folders: the
    dense files name images relative to the folders' common root."""
    d0, d1 = Path(dir0).resolve(), Path(dir1).resolve()
    root = Path(os.path.commonpath([d0, d1]))

    def prefixer(folder: Path):
        prefix = folder.relative_to(root).as_posix()
        return str if prefix == "." else (lambda name: f"{prefix}/{name}")

    return root, prefixer(d0), prefixer(d1)


def assign_to_keypoints(points: np.ndarray, keypoints: np.ndarray, max_px: float) -> np.ndarray:
    """[P] index of the nearest of `keypoints` [N, 2] within `max_px` of each of `points`
    [P, 2]; -1 where there is none."""
    from scipy.spatial import cKDTree

    out = np.full(len(points), -1, np.int64)
    if not len(points) or not len(keypoints):
        return out
    dist, index = cKDTree(keypoints).query(points, distance_upper_bound=max_px)
    ok = np.isfinite(dist)
    out[ok] = index[ok]
    return out


def points_to_reference(points_q: list[np.ndarray], points_r: list[np.ndarray],
                        scores: list[np.ndarray], ref_keypoints: list[np.ndarray],
                        cell_px: float, assign_px: float) -> tuple[np.ndarray, np.ndarray,
                                                                   list[Matches]]:
    """One query's dense matches to several reference images with fixed keypoints (a map's).

    Query points of every pair are quantised together (`quantise_keypoints`); each
    reference point takes the nearest reference keypoint within `assign_px` and is dropped
    when there is none. Returns the query keypoints, their scores and, per pair, the Matches
    from the query keypoints to that reference image's keypoints.
    """
    kpts, kscores, index = quantise_keypoints(
        np.concatenate(points_q) if points_q else np.zeros((0, 2), np.float32),
        np.concatenate(scores) if scores else np.zeros(0, np.float32), cell_px)
    bounds = np.cumsum([0] + [len(p) for p in points_q])
    matches = []
    for k, (pts, sc, ref) in enumerate(zip(points_r, scores, ref_keypoints, strict=True)):
        target = assign_to_keypoints(pts, ref, assign_px)
        ok = target >= 0
        matches.append(pair_matches(index[bounds[k]:bounds[k + 1]][ok], target[ok], sc[ok],
                                    len(kpts)))
    return kpts, kscores, matches


def run_match_to_reference(
    pairs: list[tuple[str, str]],
    query_dir: str | Path,
    ref_dir: str | Path,
    ref_features: str | Path,
    work_dir: str | Path,
    matcher: str,
    conf: dict | None = None,
    cell_px: float = 1.0,
    assign_px: float = 2.0,
    model=None,
) -> tuple[Path, Path, BatchReport]:
    """Match (query, reference) pairs with a dense matcher against reference images whose
    keypoints are fixed (`ref_features`, e.g. a map built from dense matches): the costly
    matching is cached in a raw store in `work_dir` (phase 1 of `run_match_dense`), then the
    query keypoints and the matches to the reference keypoints are written from it
    (`points_to_reference`). Returns (query keypoint file, match file, matching report).
    """
    work_dir = Path(work_dir)
    if model is None:
        model = build("dense", matcher, **(conf or {}))
    resolved = resolved_conf(matcher, model)
    tag = digest(resolved)
    root, qkey, rkey = common_root(query_dir, ref_dir)
    raw_file = work_dir / f"matches-{matcher}-{tag}{RAW_SUFFIX}"
    report = match_raw([(qkey(q), rkey(r)) for q, r in pairs], root, raw_file, model, resolved)
    stored_names = {f"{qkey(q)} {rkey(r)}": f"{q} {r}" for q, r in pairs}
    report.failures = {stored_names.get(k, k): v for k, v in report.failures.items()}
    by_query: dict[str, list[str]] = defaultdict(list)
    for q, r in pairs:
        by_query[q].append(r)
    extra = {"cell_px": cell_px, "assign_px": assign_px, "reference": str(ref_features)}
    feats_path = work_dir / f"keypoints-{matcher}-{tag}-query.h5"
    matches_path = work_dir / f"matches-{matcher}-{tag}-reference.h5"
    with FeatureStore(feats_path, "a", attrs=conf_attrs(resolved, **extra)) as fstore, \
            MatchStore(matches_path, "a", attrs=conf_attrs(
                resolved, features=str(feats_path), **extra)) as mstore, ExitStack() as stack:
        if not raw_file.exists():  # every pair failed: empty files
            return feats_path, matches_path, report
        raw = stack.enter_context(PairPointsStore(raw_file, "r"))
        rstore = stack.enter_context(FeatureStore(ref_features, "r"))
        for q, refs in by_query.items():
            found = []
            for r in refs:
                key, swap = names_to_pair(qkey(q), rkey(r)), False
                if key not in raw:
                    key, swap = names_to_pair(rkey(r), qkey(q)), True
                if key not in raw or r not in rstore:
                    continue  # failed pair (reported) or a reference image without keypoints
                entry = raw.read(key)
                i, j = (1, 0) if swap else (0, 1)
                found.append((r, entry[f"points{i}"], entry[f"points{j}"], entry["scores"],
                              entry[f"image_size{i}"]))
            if not found:
                continue
            kpts, kscores, matches = points_to_reference(
                [f[1] for f in found], [f[2] for f in found], [f[3] for f in found],
                [rstore.read(f[0]).keypoints for f in found], cell_px, assign_px)
            size = tuple(int(v) for v in found[0][4])
            fstore.write(q, Features(kpts, kscores, np.zeros((len(kpts), 0), np.float32), size),
                         attrs={"digest": _hash_array(kpts)})
            for (r, *_), m in zip(found, matches, strict=True):
                mstore.write(q, r, m, attrs={"digest": _hash_array(kpts, m.matches0)})
    return feats_path, matches_path, report


def _stored(raw: PairPointsStore, name0: str, name1: str, entry_digest: str) -> bool:
    key = names_to_pair(name0, name1)
    return key in raw and raw.entry_attrs(key).get("digest") == entry_digest


def _names(attrs: dict) -> tuple[str, str]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v)
                 for v in (attrs["name0"], attrs["name1"]))


def _file_attr(path: Path, key: str):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(key)
    except OSError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def run_dense_step(image_dir: Path, pairs: list[tuple[str, str]], output_dir: Path,
                   matcher: str, matcher_conf: dict | None, extra_conf=None):
    """The feature + match step of a pipeline (benchmarks, localize-xy) with a dense matcher:
    keypoint and match files in `output_dir` named after the matcher configuration (and
    `extra_conf`, e.g. the image preparation). Returns (features label "dense", features
    conf, matcher conf, keypoint file, match file, extraction report (empty), matching
    report)."""
    model = build("dense", matcher, **(matcher_conf or {}))
    mconf = resolved_conf(matcher, model)
    tag = digest(mconf, extra_conf) if extra_conf is not None else digest(mconf)
    feats_path = Path(output_dir) / f"keypoints-{matcher}-{tag}.h5"
    matches_path = Path(output_dir) / f"matches-{matcher}-{tag}.h5"
    report = run_match_dense(pairs, image_dir, matches_path, matcher, matcher_conf,
                             features_output=feats_path, model=model)
    fconf = {"name": "dense", "matcher": matcher}
    return ("dense", fconf, mconf, feats_path, matches_path, BatchReport("extract (dense)"),
            report)
