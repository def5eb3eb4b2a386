"""Step: a 3D map of the database images for 6-DoF localization (hloc's triangulation /
reconstruction, methods.md 6.4).

With known poses (a COLMAP text model or a kapture folder, rigs included): mapping pairs
(pose neighbours, retrieval or exhaustive), local features and matches (cached HDF5 files;
with a detector-free matcher, keypoints collected from its matches, `featloc.match_dense`),
verification of every match against the known epipolar geometry (Sampson distance), import
into a COLMAP database (keypoints + 0.5 through `featloc.io.colmap`) and COLMAP's point
triangulation with poses and intrinsics fixed. Without poses (`images` only): retrieval
pairs, COLMAP's geometric verification and incremental SfM (the largest model is kept).

A map folder holds:
    map.json            what the map was made from and with (features, matcher, global
                        descriptor and their confs, file names, statistics)
    model/              COLMAP text model: cameras, images (keypoints = the stored features,
                        COLMAP convention, with their 3D point ids) and points3D
    feats-*.h5          database local features; global-*.h5 (+ .state.npz) descriptors
    pairs-mapping.txt   mapping pairs; matches-mapping-*.h5 their matches
    colmap/             the COLMAP database and pycolmap's own output
Every pycolmap call goes through `featloc.io.pycolmap_api`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..batch import BatchReport
from ..config import make_conf
from ..eval.report import write_json
from ..geometry.camera import Camera
from ..geometry.pose import Pose, is_rotation, relative_pose
from ..io import pycolmap_api
from ..io.colmap import (
    ColmapModel,
    camera_from_colmap,
    model_from_views,
    read_model,
    to_colmap_pixels,
    write_model,
)
from ..io.h5 import FeatureStore, MatchStore
from ..io.images import list_images
from ..io.pairs import pairs_exhaustive, write_pairs
from ..match_dense import is_dense_matcher, run_dense_step
from ..progress import track
from . import DEFAULT_FEATURES, DEFAULT_GLOBAL, DEFAULT_MATCHER
from .cache import extract_features, match_pairs, matches_file, resolved_conf
from .retrieval import GlobalIndex, compute_global, read_global, retrieve

logger = logging.getLogger(__name__)

MAP_FILE = "map.json"
MAP_MODEL_DIR = "model"
PAIR_SOURCES = ("poses", "retrieval", "exhaustive")


class MapError(ValueError):
    """A map folder is missing, incomplete or inconsistent. The message names the path."""


@dataclass(frozen=True)
class MapConf:
    mapping_pairs: str = "poses"  # poses | retrieval | exhaustive (without poses: retrieval)
    num_pairs: int = 20  # mapping pairs per image (hloc: 20 covisible images)
    max_angle_deg: float = 60.0  # poses: only images whose optical axes differ less
    verify_max_error_px: float = 4.0  # known poses: max Sampson distance of a kept match
    min_pair_matches: int = 15  # pairs with fewer verified matches are not imported
    min_tri_angle_deg: float = 1.5  # COLMAP's triangulation angle
    max_reproj_error_px: float = 4.0  # COLMAP's merge/complete/filter reprojection error
    two_view_tracks: bool = True  # known poses: also triangulate points seen in two images
    seed: int = 0

    def __post_init__(self):
        if self.mapping_pairs not in PAIR_SOURCES:
            raise ValueError(f"mapping_pairs must be one of {PAIR_SOURCES}, got {self.mapping_pairs!r}")
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {self.num_pairs}")


# -- reference poses --------------------------------------------------------------------------
@dataclass
class Reference:
    """Database images with known intrinsics (project convention) and cam_from_world poses."""

    image_dir: Path
    cameras: dict[str, Camera]
    poses: dict[str, Pose]
    source: dict


def _check_poses(poses: Mapping[str, Pose], where: str) -> None:
    for name, pose in poses.items():
        if not is_rotation(pose.R) or not np.isfinite(pose.t).all():
            raise MapError(f"{where}: the pose of image {name!r} is not a rigid transform")


def reference_from_colmap(model_dir: str | Path, image_dir: str | Path) -> Reference:
    """Known poses from a COLMAP text model (a non-unit quaternion is an error naming the
    file, line and image)."""
    model_dir = Path(model_dir)
    try:
        model = read_model(model_dir, strict_rotations=True)
    except ValueError as exc:
        raise MapError(str(exc)) from None
    cameras, poses = {}, {}
    for image in model.images.values():
        if image.camera_id not in model.cameras:
            raise MapError(f"{model_dir / 'images.txt'}: image {image.name!r} has unknown camera "
                           f"{image.camera_id}")
        cameras[image.name] = camera_from_colmap(model.cameras[image.camera_id])
        poses[image.name] = image.cam_from_world
    _check_poses(poses, str(model_dir / "images.txt"))
    return Reference(Path(image_dir), cameras, poses, {"kind": "colmap", "path": str(model_dir)})


def reference_from_kapture(root: str | Path) -> Reference:
    """Known poses from a kapture folder (rigs composed; images under records_data)."""
    from ..io.kapture_io import read_kapture

    try:
        data = read_kapture(root, strict_rotations=True)
    except ValueError as exc:
        raise MapError(str(exc)) from None
    missing = [n for n in data.names if n not in data.poses]
    if missing:
        logger.warning("%s: %d images have no pose and are left out of the map (e.g. %s)",
                       root, len(missing), missing[0])
    _check_poses(data.poses, str(Path(root) / "sensors" / "trajectories.txt"))
    return Reference(data.image_dir, {n: data.cameras[n] for n in data.poses}, data.poses,
                     {"kind": "kapture", "path": str(root)})


# -- mapping pairs ----------------------------------------------------------------------------
def pairs_from_poses(
    poses: Mapping[str, Pose], num_pairs: int, max_angle_deg: float = 60.0
) -> list[tuple[str, str]]:
    """For each image, its `num_pairs` nearest cameras (centre distance) among those whose
    optical axes differ by less than `max_angle_deg` (hloc's pairs_from_poses)."""
    names = sorted(poses)
    if len(names) < 2:
        return []
    centers = np.stack([poses[n].center for n in names])
    axes = np.stack([poses[n].R[2] for n in names])  # optical axis in world coordinates
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cos = np.clip(axes @ axes.T, -1, 1)
    dist[cos < np.cos(np.deg2rad(max_angle_deg))] = np.inf
    np.fill_diagonal(dist, np.inf)
    pairs = set()
    for i in range(len(names)):
        order = np.argsort(dist[i], kind="stable")[:num_pairs]
        for j in order:
            if np.isfinite(dist[i, j]):
                pairs.add((min(i, j), max(i, j)))
    return [(names[i], names[j]) for i, j in sorted(pairs)]


def _retrieval_pairs(image_dir, work_dir, names, global_name, global_conf, num_pairs):
    files = compute_global(image_dir, work_dir, global_name, global_conf, names)
    if not files.names:
        raise MapError(f"{image_dir}: no readable database image")
    index = GlobalIndex(read_global(files.descriptors, files.names), files.names)
    retrieved = retrieve(read_global(files.descriptors, files.names), files.names, index,
                         num_pairs, exclude_self=True)
    unique = {}
    for q, hits in retrieved.items():
        for d, _ in hits:
            unique.setdefault(frozenset((q, d)), (q, d))
    return list(unique.values()), files


# -- verification with known poses ------------------------------------------------------------------
def sampson_error_px(
    points0: np.ndarray, points1: np.ndarray, camera0: Camera, camera1: Camera, T_0to1: Pose
) -> np.ndarray:
    """[K] Sampson distance of correspondences to the epipolar geometry of known poses, in
    pixels (normalised-coordinate error times the mean focal length); inf where a point
    cannot be undistorted."""
    x0 = camera0.normalized_from_image(points0)
    x1 = camera1.normalized_from_image(points1)
    t = T_0to1.t
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ T_0to1.R
    h0 = np.concatenate([x0, np.ones((len(x0), 1))], 1)
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    Ex0, Etx1 = h0 @ E.T, h1 @ E
    num = np.einsum("ij,ij->i", h1, Ex0) ** 2
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.sqrt(num / den) * 0.5 * (camera0.focal + camera1.focal)
    return np.where(np.isfinite(err), err, np.inf)


# -- the step -------------------------------------------------------------------------------------------
def _write_map_info(map_dir: Path, info: dict) -> None:
    write_json(map_dir / MAP_FILE, info)


def _rel(path: Path | None, root: Path) -> str | None:
    return None if path is None else os.path.relpath(path, root)


def run_map(
    output_dir: str | Path,
    image_dir: str | Path | None = None,
    colmap_model: str | Path | None = None,
    kapture: str | Path | None = None,
    features: str = DEFAULT_FEATURES,
    matcher: str = DEFAULT_MATCHER,
    extractor_conf: dict | None = None,
    matcher_conf: dict | None = None,
    global_name: str = DEFAULT_GLOBAL,
    global_conf: dict | None = None,
    conf: MapConf | dict | None = None,
    verbose: bool = False,
) -> Path:
    """Build a localization map in `output_dir` and return it (layout: module doc).

    Exactly one source: `kapture` (a folder; images under sensors/records_data),
    `colmap_model` + `image_dir` (a text model with known poses), or `image_dir` alone
    (incremental SfM). Features and matches already stored are reused.
    """
    conf = conf if isinstance(conf, MapConf) else make_conf(MapConf, conf)
    output_dir = Path(output_dir)
    tic = time.perf_counter()
    if kapture is not None:
        if colmap_model is not None:
            raise ValueError("give either a kapture folder or a COLMAP model, not both")
        ref = reference_from_kapture(kapture)
    elif colmap_model is not None:
        if image_dir is None:
            raise ValueError("a COLMAP model needs its image folder (image_dir)")
        ref = reference_from_colmap(colmap_model, image_dir)
    elif image_dir is not None:
        ref = None
    else:
        raise ValueError("no database: give a kapture folder, a COLMAP model with its images, "
                         "or an image folder")
    image_dir = ref.image_dir if ref is not None else Path(image_dir)
    available = list_images(image_dir) if image_dir.is_dir() else []
    if ref is not None:
        names = sorted(ref.poses)
        missing = sorted(set(names) - set(available))
        if missing:
            raise MapError(f"{image_dir}: {len(missing)} database images of the model are missing "
                           f"(e.g. {missing[0]!r})")
    else:
        names = available
    if not names:
        raise MapError(f"{image_dir}: the database is empty (no images)")
    output_dir.mkdir(parents=True, exist_ok=True)

    dense = is_dense_matcher(matcher)
    if dense:  # keypoints come from the mapping pairs' dense matches (below)
        feats_path, fx_report = None, BatchReport("extract (dense)")
    else:
        feats_path, fx_report = extract_features(image_dir, output_dir, features, extractor_conf,
                                                 names)
    if fx_report.failures:  # already reported one by one; the map goes on without them
        logger.error("map: %d unreadable database images are left out", len(fx_report.failures))
        names = [n for n in names if n not in fx_report.failures]
        if ref is not None:
            ref.poses = {n: ref.poses[n] for n in names}
            ref.cameras = {n: ref.cameras[n] for n in names}
        if not names:
            raise MapError(f"{image_dir}: no readable database image")
    # Retrieval descriptors of the database are needed to localize anyway.
    source = conf.mapping_pairs if ref is not None else "retrieval"
    if source == "retrieval":
        pairs, global_files = _retrieval_pairs(image_dir, output_dir, names, global_name,
                                               global_conf, conf.num_pairs)
    else:
        global_files = compute_global(image_dir, output_dir, global_name, global_conf, names)
        if source == "poses":
            pairs = pairs_from_poses(ref.poses, conf.num_pairs, conf.max_angle_deg)
        else:
            pairs = pairs_exhaustive(names)
    if not pairs:
        raise MapError(f"{image_dir}: no mapping pairs ({len(names)} images)")
    pairs_path = write_pairs(output_dir / "pairs-mapping.txt", pairs)
    if dense:
        *_, feats_path, matches_path, _, match_report = run_dense_step(
            image_dir, pairs, output_dir, matcher, matcher_conf)
        features, extractor_conf = "dense", {}
    else:
        matches_path = matches_file(output_dir, feats_path, matcher, matcher_conf, "mapping")
        match_report = match_pairs(pairs, feats_path, matches_path, matcher, matcher_conf)

    colmap_dir = output_dir / "colmap"
    database = colmap_dir / "database.db"
    with FeatureStore(feats_path, "r") as fstore:
        # (dense: an image whose every pair failed has no keypoints)
        keypoints = {n: fstore.read(n).keypoints if n in fstore else np.zeros((0, 2), np.float32)
                     for n in names}
    stats: dict = {"num_images": len(names), "num_unreadable": len(fx_report.failures),
                   "num_pairs": len(pairs), "num_match_failures": len(match_report.failures)}
    if ref is not None:
        base = model_from_views(ref.cameras, ref.poses, share_cameras=True)
        reference = pycolmap_api.reconstruction_from_model(base)
        ids = pycolmap_api.create_database_from_reconstruction(database, reference)
        pycolmap_api.import_keypoints(database, {ids[n]: to_colmap_pixels(k) for n, k in keypoints.items()})
        imported, kept, total = [], 0, 0
        with MatchStore(matches_path, "r") as mstore:
            for n0, n1 in track(pairs, desc="verify (poses)"):
                if not mstore.has_pair(n0, n1):
                    continue
                idx = mstore.read(n0, n1, len(keypoints[n0])).indices()
                total += len(idx)
                if not len(idx):
                    continue
                err = sampson_error_px(keypoints[n0][idx[:, 0]], keypoints[n1][idx[:, 1]],
                                       ref.cameras[n0], ref.cameras[n1],
                                       relative_pose(ref.poses[n0], ref.poses[n1]))
                good = idx[err <= conf.verify_max_error_px]
                if len(good) >= conf.min_pair_matches:
                    imported.append((ids[n0], ids[n1], good))
                    kept += len(good)
        pycolmap_api.import_matches(database, imported, verified=True)
        stats.update(num_matches=total, num_verified_matches=kept, num_verified_pairs=len(imported))
        logger.info("map: %d of %d matches agree with the known poses; %d pairs imported",
                    kept, total, len(imported))
        rec = pycolmap_api.triangulate_points(
            reference, database, image_dir, colmap_dir / "triangulated",
            conf.min_tri_angle_deg, conf.max_reproj_error_px, conf.seed, verbose=verbose,
            two_view_tracks=conf.two_view_tracks)
    else:
        ids = pycolmap_api.create_database_from_images(database, image_dir, names)
        pycolmap_api.import_keypoints(database, {ids[n]: to_colmap_pixels(k) for n, k in keypoints.items()})
        with MatchStore(matches_path, "r") as mstore:
            raw = [(ids[n0], ids[n1], mstore.read(n0, n1, len(keypoints[n0])).indices())
                   for n0, n1 in pairs if mstore.has_pair(n0, n1)]
        pycolmap_api.import_matches(database, [r for r in raw if len(r[2])], verified=False)
        pycolmap_api.verify_matches(database, pairs_path, seed=conf.seed)
        stats["num_verified_pairs"] = pycolmap_api.num_verified_pairs(database)
        rec = pycolmap_api.incremental_mapping(
            database, image_dir, colmap_dir / "sfm", conf.min_tri_angle_deg,
            conf.max_reproj_error_px, conf.seed, verbose=verbose)
        if rec is None:
            raise MapError(f"{image_dir}: incremental SfM reconstructed nothing "
                           f"({stats['num_verified_pairs']} verified pairs)")
    model = pycolmap_api.model_from_reconstruction(rec)
    registered = {im.name for im in model.images.values()}
    if ref is None and len(registered) < len(names):
        logger.warning("map: SfM registered %d of %d images", len(registered), len(names))
    write_model(model, output_dir / MAP_MODEL_DIR)
    observations = sum(int((im.point3D_ids >= 0).sum()) for im in model.images.values())
    stats.update(num_registered=len(registered), num_points3D=len(model.points3D),
                 num_observations=observations, seconds=round(time.perf_counter() - tic, 2))
    _write_map_info(output_dir, {
        "version": 1,
        "image_dir": str(image_dir.resolve()),
        "source": ref.source if ref is not None else {"kind": "images", "path": str(image_dir)},
        "features": features, "extractor_conf": extractor_conf or {},
        "matcher": matcher, "matcher_conf": matcher_conf or {},
        "global": global_name, "global_conf": global_conf or {},
        "confs": {"map": dataclasses.asdict(conf),
                  "extractor": ({"name": "dense"} if dense else
                                resolved_conf("extractor", features, extractor_conf)),
                  "matcher": resolved_conf("dense" if dense else "matcher", matcher,
                                           matcher_conf)},
        "files": {"features": _rel(feats_path, output_dir),
                  "global": _rel(global_files.descriptors, output_dir),
                  "global_state": _rel(global_files.state, output_dir),
                  "pairs": _rel(pairs_path, output_dir), "matches": _rel(matches_path, output_dir),
                  "model": MAP_MODEL_DIR, "database": _rel(database, output_dir)},
        "global_names": global_files.names,
        "stats": stats,
    })
    logger.info("map: %d images, %d 3D points, %d observations -> %s", len(registered),
                len(model.points3D), observations, output_dir)
    return output_dir


# -- reading a map --------------------------------------------------------------------------------------
@dataclass
class LoadedMap:
    """A map folder in memory: its info, the model and per-image 3D point ids."""

    root: Path
    info: dict
    model: ColmapModel
    point3D_ids: dict[str, np.ndarray]  # per database image: [N] ids aligned with its features
    points_xyz: np.ndarray  # [P, 3] world points
    point_rows: np.ndarray  # [max id + 1] row of points_xyz per point id (-1: none)

    @property
    def features_path(self) -> Path:
        return self.root / self.info["files"]["features"]

    @property
    def global_path(self) -> Path:
        return self.root / self.info["files"]["global"]

    @property
    def global_state(self) -> Path | None:
        state = self.info["files"].get("global_state")
        return None if state is None else self.root / state

    def pose(self, name: str) -> Pose:
        return self.model.image_by_name(name).cam_from_world


def load_map(map_dir: str | Path) -> LoadedMap:
    """Read a map folder written by `run_map`."""
    root = Path(map_dir)
    path = root / MAP_FILE
    if not path.is_file():
        raise MapError(f"{root}: not a map folder (no {MAP_FILE}); build one with `featloc map`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MapError(f"{path}: unreadable ({exc})") from None
    model = read_model(root / info["files"]["model"])
    if not model.images:
        raise MapError(f"{root}: the map has no registered images")
    point_ids = np.array(sorted(model.points3D), np.int64)
    xyz = np.stack([model.points3D[p].xyz for p in point_ids]) if len(point_ids) else np.zeros((0, 3))
    rows = np.full(int(point_ids.max()) + 1 if len(point_ids) else 0, -1, np.int64)
    rows[point_ids] = np.arange(len(point_ids))
    ids = {im.name: im.point3D_ids for im in model.images.values()}
    for name, pids in ids.items():
        if len(pids) and (pids.max() >= len(rows) or (rows[pids[pids >= 0]] < 0).any()):
            raise MapError(f"{root}: image {name!r} observes 3D points missing from points3D.txt")
    return LoadedMap(root, info, model, ids, xyz, rows)


def check_map_features(loaded: LoadedMap, names: Sequence[str]) -> None:
    """Raise unless the stored features of `names` are the model's keypoints."""
    with FeatureStore(loaded.features_path, "r") as fstore:
        for name in names:
            n = len(fstore.read(name)) if name in fstore else -1
            if n != len(loaded.point3D_ids[name]):
                raise MapError(f"{loaded.root}: {name}: {n} stored keypoints but "
                               f"{len(loaded.point3D_ids[name])} in the model (stale map?)")
