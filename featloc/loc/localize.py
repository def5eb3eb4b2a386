"""Step: 6-DoF poses of query images against a map built by `featloc.loc.sfm.run_map`
(hloc's localize_sfm, methods.md 6.4 steps 5-9).

Per query: retrieve the top `num_loc` database images (global descriptors, faiss), match the
query to each (the map's features and matcher, cached HDF5 files; a map built with a
detector-free matcher matches the query and database images directly and assigns each
database point to the nearest map keypoint within `assign_px`, 2 px), gather 2D-3D
correspondences (query keypoint -> database keypoint -> 3D point id; duplicates removed per
keypoint, one keypoint may link to several points), then P3P LO-RANSAC (12 px by default)
and non-linear refinement with the query's known intrinsics
(`pycolmap_api.estimate_absolute_pose`). The result is a `featloc.types.LocResult`.
With `refine_matches` (sparse maps), each matched query point is first moved to where the
patch around its database keypoint aligns (`featloc.matching.refine`: the database point
stays, since its 3D point is tied to it), failed alignments are dropped, and a query keypoint
matched to one 3D point through several database images takes the mean of its refined points.

Outputs: `poses.txt` with `name qw qx qy qz tx ty tz` (cam_from_world; names as under the
query folder) for localized queries; each query without a pose is written as a comment
line `# unlocalized: name (reason)` and listed in the JSON log `<output stem>.log.json`.
`fallback="retrieval"` (off by default) gives an unlocalized query the pose of its top
retrieved database image; such queries are counted separately and flagged in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..batch import BatchReport
from ..config import build, make_conf
from ..eval.report import write_json
from ..geometry.camera import Camera
from ..geometry.pose import Pose
from ..io import pycolmap_api
from ..io.colmap import (
    ColmapCamera,
    camera_to_colmap,
    format_pose_line,
    to_colmap_pixels,
)
from ..io.h5 import FeatureStore, MatchStore
from ..io.images import ImageReadError, read_image
from ..match_dense import is_dense_matcher, points_to_reference, run_match_to_reference
from ..matching.refine import RefinedMatches, refine_matches
from ..progress import track
from ..types import Features, LocResult, Matches
from .cache import extract_features, match_pairs, matches_file
from .retrieval import (
    GlobalIndex,
    IndexConf,
    build_global,
    compute_global,
    read_global,
    retrieve,
)
from .sfm import LoadedMap, MapError, check_map_features, load_map

logger = logging.getLogger(__name__)

FALLBACKS = ("none", "retrieval")


@dataclass(frozen=True)
class LocConf:
    num_loc: int = 10  # retrieved database images per query (hloc Aachen: 50)
    ransac_max_error_px: float = 12.0  # PnP RANSAC reprojection threshold (hloc: 12 px)
    min_inliers: int = 12  # fewer PnP inliers: not localized
    refine: bool = True  # non-linear refinement of the RANSAC pose on its inliers
    fallback: str = "none"  # none | retrieval (pose of the top retrieved image, flagged)
    index: str = "flat"  # faiss index: flat | ivf | hnsw
    seed: int = 0  # RANSAC seed
    # detector-free maps: a database point takes the map keypoint nearest to it within this
    assign_px: float = 2.0
    # move each matched query point to where its database point's patch aligns
    # (featloc.matching.refine, default settings; sparse maps, needs the database images)
    refine_matches: bool = False

    def __post_init__(self):
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.num_loc < 1:
            raise ValueError(f"num_loc must be >= 1, got {self.num_loc}")
        if self.assign_px <= 0:
            raise ValueError(f"assign_px must be > 0, got {self.assign_px}")


def _as_colmap_camera(camera: Camera | ColmapCamera) -> ColmapCamera:
    return camera if isinstance(camera, ColmapCamera) else camera_to_colmap(camera)


def gather_correspondences(
    loaded: LoadedMap, matches: Mapping[str, Matches],
    refined: Mapping[str, RefinedMatches] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    """2D-3D correspondences from query-to-database matches.

    `refined` (optional, by database image): the refinement of that image's matches in the
    order of `m.indices()`, with the query as image 1.

    Returns [K] query keypoint indices, [K] 3D point rows (of `loaded.points_xyz`), the
    database images that contributed, and with `refined` the [K, 2] refined query points
    (mean over the database images that gave the same keypoint-point link; else None).
    """
    kp, rows, points, used = [], [], [], []
    for name, m in matches.items():
        ids = loaded.point3D_ids.get(name)
        if ids is None:
            continue
        idx = m.indices()
        xy = None
        if refined is not None:
            if name not in refined:
                continue
            keep = refined[name].keep
            idx, xy = idx[keep], refined[name].points1[keep]
        if not len(idx):
            continue
        pid = ids[idx[:, 1]]
        ok = pid >= 0
        if ok.any():
            used.append(name)
            kp.append(idx[ok, 0])
            rows.append(loaded.point_rows[pid[ok]])
            if xy is not None:
                points.append(xy[ok])
    if not kp:
        empty = np.zeros(0, np.int64)
        return empty, empty, [], None if refined is None else np.zeros((0, 2), np.float32)
    pairs, inverse = np.unique(np.stack([np.concatenate(kp), np.concatenate(rows)], 1), axis=0,
                               return_inverse=True)
    if refined is None:
        return pairs[:, 0], pairs[:, 1], used, None
    inverse = inverse.reshape(-1)
    total = np.zeros((len(pairs), 2))
    np.add.at(total, inverse, np.concatenate(points))
    mean = total / np.bincount(inverse, minlength=len(pairs))[:, None]
    return pairs[:, 0], pairs[:, 1], used, mean.astype(np.float32)


def refine_query_matches(
    query_image: np.ndarray,
    query_features: Features,
    matches: Mapping[str, Matches],
    db_image: Callable[[str], np.ndarray],
    db_features: Callable[[str], Features],
) -> dict[str, RefinedMatches]:
    """Sub-pixel refinement of each database image's matches (`featloc.matching.refine`,
    default settings): the database keypoint stays and the query point moves."""
    out = {}
    for name, m in matches.items():
        idx = m.indices()
        if not len(idx):
            continue
        points = query_features.keypoints[idx[:, 0]]
        try:
            image = db_image(name)
        except ImageReadError as exc:  # keep this image's matches as they are
            logger.warning("%s; its matches are not refined", exc)
            out[name] = RefinedMatches.unrefined(points)
            continue
        out[name] = refine_matches(image, query_image, db_features(name).keypoints[idx[:, 1]],
                                   points)
    return out


def localize_from_matches(
    loaded: LoadedMap,
    query_features: Features,
    camera: Camera | ColmapCamera,
    matches: Mapping[str, Matches],
    conf: LocConf | None = None,
    refined: Mapping[str, RefinedMatches] | None = None,
) -> LocResult:
    """Absolute pose of one query from its matches to database images (by name);
    `refined`: their sub-pixel refinement (`refine_query_matches`)."""
    conf = conf or LocConf()
    kp, rows, used, points = gather_correspondences(loaded, matches, refined)
    if points is None:
        points = query_features.keypoints[kp]
    info = {"num_correspondences": int(len(kp)), "num_db_with_points": len(used),
            "ransac_max_error_px": conf.ransac_max_error_px}
    if len(kp) < max(4, conf.min_inliers):
        return LocResult(Pose.identity(), 0, np.zeros(len(kp), bool), used, False,
                         {**info, "reason": f"{len(kp)} 2D-3D correspondences"})
    result = pycolmap_api.estimate_absolute_pose(
        to_colmap_pixels(points), loaded.points_xyz[rows],
        _as_colmap_camera(camera), conf.ransac_max_error_px, seed=conf.seed, refine=conf.refine)
    if result is None:
        return LocResult(Pose.identity(), 0, np.zeros(len(kp), bool), used, False,
                         {**info, "reason": "PnP RANSAC found no pose"})
    if result["num_inliers"] < conf.min_inliers:
        return LocResult(Pose.identity(), result["num_inliers"], result["inlier_mask"], used, False,
                         {**info, "reason": f"{result['num_inliers']} PnP inliers (< {conf.min_inliers})"})
    return LocResult(result["cam_from_world"], result["num_inliers"], result["inlier_mask"], used,
                     True, info)


def _database_dir(loaded: LoadedMap, why: str | None = None) -> Path:
    """The map's database images, which a detector-free matcher and the match refinement
    need at localization time."""
    image_dir = Path(loaded.info["image_dir"])
    if not image_dir.is_dir():
        why = why or f"to match queries with {loaded.info['matcher']!r} (a detector-free matcher)"
        raise MapError(f"{loaded.root}: the database images ({image_dir}) are needed {why} but "
                       "are not there")
    return image_dir


def _check_refine(conf: LocConf, loaded: LoadedMap, dense: bool) -> Path | None:
    """The database image folder when `conf.refine_matches` applies (None otherwise)."""
    if not conf.refine_matches:
        return None
    if dense:
        raise ValueError("refine_matches applies to maps of local features; a detector-free "
                         f"matcher ({loaded.info['matcher']!r}) gives its own points")
    return _database_dir(loaded, "to refine the matches (refine_matches)")


class _FeatureReader:
    """Database features by name, read from the map's HDF5 file on demand (a small LRU
    cache keeps the images of recent queries); `reader[name] = features` adds an entry."""

    def __init__(self, path: Path, names: Sequence[str], cache_size: int = 64):
        self.store = FeatureStore(path, "r")
        self.names = set(names)
        self.cache: OrderedDict[str, Features] = OrderedDict()
        self.extra: dict[str, Features] = {}
        self.cache_size = cache_size

    def __contains__(self, name: str) -> bool:
        return name in self.extra or name in self.names

    def __getitem__(self, name: str) -> Features:
        if name in self.extra:
            return self.extra[name]
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        if name not in self.names:
            raise KeyError(name)
        features = self.cache[name] = self.store.read(name)
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return features

    def __setitem__(self, name: str, features: Features) -> None:
        self.extra[name] = features

    def close(self) -> None:
        self.store.close()


class Localizer:
    """In-memory localization of single images against a loaded map (notebooks, timing).

    `localize_image(image, camera)` runs every stage (features, global descriptor, faiss
    search, matching against the top `num_loc`, PnP) and records per-stage seconds in
    `result.info["timings"]`. Batch work with caching is `run_localize`.
    """

    def __init__(self, map_dir: str | Path, conf: LocConf | dict | None = None,
                 index_descriptors: np.ndarray | None = None, index_names: Sequence[str] | None = None):
        self.conf = conf if isinstance(conf, LocConf) else make_conf(LocConf, conf)
        self.map = load_map(map_dir)
        info = self.map.info
        self.dense = is_dense_matcher(info["matcher"])
        if self.dense:  # matches query and database images directly
            self.extractor, self.db_dir = None, _database_dir(self.map)
            self.matcher = build("dense", info["matcher"], **info["matcher_conf"])
        else:
            self.extractor = build("extractor", info["features"], **info["extractor_conf"])
            self.matcher = build("matcher", info["matcher"], **info["matcher_conf"])
        self.refine_dir = _check_refine(self.conf, self.map, self.dense)
        self.global_model = build_global(info["global"], info["global_conf"])
        if self.global_model.needs_fit:
            self.global_model.load_state(dict(np.load(self.map.global_state)))
        self.local_for_global = None
        if self.global_model.input == "local_features":
            name, lconf = self.global_model.local_features()
            same = name == info["features"] and not lconf and not info["extractor_conf"]
            self.local_for_global = None if same else build("extractor", name, **lconf)
        names = [n for n in info["global_names"] if n in self.map.point3D_ids]
        if index_descriptors is None:
            index_descriptors, index_names = read_global(self.map.global_path, names), names
        self.index = GlobalIndex(index_descriptors, index_names, IndexConf(kind=self.conf.index))
        self.db_features = _FeatureReader(self.map.features_path, names)

    def close(self) -> None:
        self.db_features.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def localize_image(self, image: np.ndarray, camera: Camera | ColmapCamera) -> LocResult:
        timings = {}
        tic = time.perf_counter()
        feats = None if self.dense else self.extractor.extract(image)
        timings["extract_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        if self.global_model.input == "local_features":
            local = feats if self.local_for_global is None else self.local_for_global.extract(image)
            gdesc = self.global_model.describe(features=local)
        else:
            gdesc = self.global_model.describe(image=image)
        timings["global_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        hits = retrieve(gdesc[None], ["query"], self.index, self.conf.num_loc)["query"]
        timings["retrieval_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        if self.dense:
            feats, matches = self._match_dense(image, [n for n, _ in hits
                                                       if n in self.db_features])
        else:
            matches = {n: self.matcher.match(feats, self.db_features[n]) for n, _ in hits
                       if n in self.db_features}
        timings["matching_s"] = time.perf_counter() - tic
        refined = None
        if self.refine_dir is not None:
            tic = time.perf_counter()
            refined = refine_query_matches(
                image, feats, matches, lambda n: read_image(self.refine_dir / n, grayscale=True),
                self.db_features.__getitem__)
            timings["refine_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        result = localize_from_matches(self.map, feats, camera, matches, self.conf, refined)
        timings["pnp_s"] = time.perf_counter() - tic
        result.info.update(timings=timings, retrieved=[n for n, _ in hits])
        return result

    def _match_dense(self, image: np.ndarray, names: Sequence[str]
                     ) -> tuple[Features, dict[str, Matches]]:
        """Query keypoints and matches to the database keypoints, from dense matches."""
        from ..io.images import read_image

        pts_q, pts_db, scores = [], [], []
        for name in names:
            points = self.matcher.match_points(image, read_image(self.db_dir / name))
            pts_q.append(points["keypoints0"])
            pts_db.append(points["keypoints1"])
            scores.append(points["scores"])
        kpts, kscores, matches = points_to_reference(
            pts_q, pts_db, scores, [self.db_features[n].keypoints for n in names], 1.0,
            self.conf.assign_px)
        feats = Features(kpts, kscores, np.zeros((len(kpts), 0), np.float32),
                         (image.shape[1], image.shape[0]))
        return feats, dict(zip(names, matches, strict=True))


def run_localize(
    map_dir: str | Path,
    query_dir: str | Path,
    query_cameras: Mapping[str, Camera | ColmapCamera],
    output: str | Path,
    work_dir: str | Path | None = None,
    conf: LocConf | dict | None = None,
    log: str | Path | None = None,
) -> tuple[Path, dict[str, LocResult]]:
    """Localize the queries (names under `query_dir` with their cameras) against a map.

    Writes `output` (poses.txt, see the module doc) and the JSON log (`log`, default
    `<output stem>.log.json`); features, descriptors and matches are cached in `work_dir`
    (default `<output stem>-work`). Returns the output path and the results by name.
    """
    conf = conf if isinstance(conf, LocConf) else make_conf(LocConf, conf)
    query_dir, output = Path(query_dir), Path(output)
    work_dir = Path(work_dir) if work_dir is not None else output.with_name(f"{output.stem}-work")
    log = Path(log) if log is not None else output.with_name(f"{output.stem}.log.json")
    tic = time.perf_counter()
    loaded = load_map(map_dir)
    info = loaded.info
    names = list(query_cameras)
    if not names:
        raise ValueError("no queries to localize")
    cameras = {n: _as_colmap_camera(c) for n, c in query_cameras.items()}
    db_names = [n for n in info["global_names"] if n in loaded.point3D_ids]
    if not db_names:
        raise MapError(f"{map_dir}: no database image of the map has a pose")
    check_map_features(loaded, db_names[:3])

    dense = is_dense_matcher(info["matcher"])
    refine_dir = _check_refine(conf, loaded, dense)
    if dense:  # query keypoints come from the dense matches (below)
        q_report = BatchReport("extract (dense)")
    else:
        q_feats, q_report = extract_features(query_dir, work_dir, info["features"],
                                             info["extractor_conf"], names)
    q_global = compute_global(query_dir, work_dir, info["global"], info["global_conf"], names,
                              state=loaded.global_state)
    index = GlobalIndex(read_global(loaded.global_path, db_names), db_names, IndexConf(kind=conf.index))
    retrieved = retrieve(read_global(q_global.descriptors, q_global.names), q_global.names, index,
                         conf.num_loc)
    pairs = [(q, d) for q, hits in retrieved.items() for d, _ in hits]
    if dense:
        q_feats, matches_path, m_report = run_match_to_reference(
            pairs, query_dir, _database_dir(loaded), loaded.features_path, work_dir,
            info["matcher"], info["matcher_conf"], assign_px=conf.assign_px)
        for key, reason in m_report.failures.items():  # "query db": a query's every pair
            q_report.failures.setdefault(key.split(" ")[0], reason)
    else:
        matches_path = matches_file(work_dir, q_feats, info["matcher"], info["matcher_conf"],
                                    "loc")
        match_pairs(pairs, q_feats, matches_path, info["matcher"], info["matcher_conf"],
                    features_ref=loaded.features_path)

    failed = {**q_report.failures, **q_global.report.failures}
    results: dict[str, LocResult] = {}
    records, lines, comments = [], [], []
    with FeatureStore(q_feats, "r") as qstore, MatchStore(matches_path, "r") as mstore, \
            (nullcontext() if refine_dir is None
             else FeatureStore(loaded.features_path, "r")) as db_store:
        for name in track(names, desc="localize"):
            record = {"query": name}
            if name not in retrieved or name not in qstore:
                reason = failed.get(name, "no features or global descriptor")
                result = LocResult(Pose.identity(), 0, np.zeros(0, bool), [], False,
                                   {"reason": reason, "failed": True})
            else:
                fq = qstore.read(name)
                matches = {d: mstore.read(name, d, len(fq)) for d, _ in retrieved[name]
                           if mstore.has_pair(name, d)}
                refined = None if refine_dir is None else refine_query_matches(
                    read_image(query_dir / name, grayscale=True), fq, matches,
                    lambda n: read_image(refine_dir / n, grayscale=True), db_store.read)
                result = localize_from_matches(loaded, fq, cameras[name], matches, conf, refined)
                record.update(retrieved=[[d, round(s, 4)] for d, s in retrieved[name]],
                              num_matches={d: len(m) for d, m in matches.items()})
                if not result.localized and conf.fallback == "retrieval" and retrieved[name]:
                    top = retrieved[name][0][0]
                    result.info["fallback"] = "retrieval"
                    result.info["fallback_db"] = top
                    result.cam_from_world = loaded.pose(top)
            results[name] = result
            record.update(localized=result.localized, fallback=result.info.get("fallback"),
                          num_inliers=result.num_inliers, db_names=result.db_names,
                          **{k: v for k, v in result.info.items() if k not in ("fallback",)})
            records.append(record)
            if result.localized or result.info.get("fallback"):
                lines.append(format_pose_line(name, result.cam_from_world))
            else:
                comments.append(f"# unlocalized: {name} ({result.info.get('reason', '')})")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines + comments), encoding="utf-8")
    tmp.replace(output)
    localized = sum(r.localized for r in results.values())
    fallback = sum(bool(r.info.get("fallback")) for r in results.values())
    summary = {"num_queries": len(names), "num_localized": localized, "num_fallback": fallback,
               "num_unlocalized": len(names) - localized - fallback,
               "unlocalized": [n for n, r in results.items() if not r.localized and not r.info.get("fallback")],
               "fallback_queries": [n for n, r in results.items() if r.info.get("fallback")],
               "seconds": round(time.perf_counter() - tic, 3)}
    write_json(log, {"step": "localize", "map": str(map_dir), "query_dir": str(query_dir),
                     "summary": summary, "conf": dataclasses.asdict(conf),
                     "features": info["features"], "matcher": info["matcher"],
                     "work_dir": str(work_dir), "queries": records})
    logger.info("localize: %d/%d localized, %d fallback, %d unlocalized -> %s", localized,
                len(names), fallback, summary["num_unlocalized"], output)
    return output, results


def read_query_cameras(
    kapture: str | Path | None = None,
    query_list: str | Path | None = None,
    query_dir: str | Path | None = None,
) -> tuple[Path, dict[str, ColmapCamera]]:
    """(image folder, cameras by name) of queries given as a kapture folder or as hloc's
    query list (`name MODEL w h params...`) with the image folder."""
    if kapture is not None:
        from ..io.kapture_io import read_kapture

        data = read_kapture(kapture, strict_rotations=False)  # query poses, if any, unused
        if not data.names:
            raise ValueError(f"{kapture}: no query images recorded")
        return data.image_dir, {n: camera_to_colmap(data.cameras[n]) for n in data.names}
    if query_list is None or query_dir is None:
        raise ValueError("queries: give a kapture folder, or a query list with its image folder")
    from ..io.colmap import read_query_list

    return Path(query_dir), read_query_list(query_list)
