"""Every pycolmap call of the project lives here (its API changes between releases).

Written against pycolmap 4.x (`Reconstruction.read_text/write_text`, `Camera.img_from_cam`,
`Camera.cam_from_img`, `Database.open`, `triangulate_points`, `incremental_mapping`,
`estimate_and_refine_absolute_pose`); rigs and frames are created by pycolmap when it reads a
text model without rigs.txt/frames.txt. Values cross this boundary in COLMAP's pixel
convention; use `featloc.io.colmap` to convert.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..geometry.pose import Pose
from .colmap import ColmapCamera, ColmapModel, read_model, write_model

logger = logging.getLogger(__name__)

MIN_PYCOLMAP_VERSION = (3, 12)  # first release with rigs/frames and `cam_from_world()`


def _pycolmap():
    try:
        import pycolmap
    except ImportError as exc:
        raise ImportError(
            "pycolmap is needed for this step: pip install 'pycolmap>=3.12'"
        ) from exc
    version = tuple(int(v) for v in pycolmap.__version__.split(".")[:2] if v.isdigit())
    if version < MIN_PYCOLMAP_VERSION:
        raise ImportError(
            f"pycolmap {pycolmap.__version__} is too old; featloc needs >= "
            f"{'.'.join(map(str, MIN_PYCOLMAP_VERSION))}"
        )
    return pycolmap


def read_reconstruction(path: str | Path):
    """A `pycolmap.Reconstruction` from a COLMAP model folder (text or binary)."""
    rec = _pycolmap().Reconstruction()
    rec.read(str(path))
    return rec


def reconstruction_from_model(model: ColmapModel):
    """A `pycolmap.Reconstruction` holding the same cameras, images and points."""
    with tempfile.TemporaryDirectory(prefix="featloc-colmap-") as tmp:
        write_model(model, tmp)
        rec = _pycolmap().Reconstruction()
        rec.read_text(tmp)
    return rec


def model_from_reconstruction(reconstruction) -> ColmapModel:
    """The cameras, images and points of a `pycolmap.Reconstruction` as a `ColmapModel`."""
    with tempfile.TemporaryDirectory(prefix="featloc-colmap-") as tmp:
        reconstruction.write_text(tmp)
        return read_model(tmp)


def _pycolmap_camera(camera: ColmapCamera):
    return _pycolmap().Camera(
        model=camera.model,
        width=int(camera.width),
        height=int(camera.height),
        params=np.asarray(camera.params, np.float64),
    )


def img_from_cam(camera: ColmapCamera, points: np.ndarray) -> np.ndarray:
    """COLMAP's projection of [N, 3] camera-frame points to [N, 2] COLMAP pixels."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    return np.asarray(_pycolmap_camera(camera).img_from_cam(points), np.float64)


def cam_from_img(camera: ColmapCamera, pixels: np.ndarray) -> np.ndarray:
    """COLMAP's [N, 2] COLMAP pixels -> [N, 2] undistorted normalised coordinates."""
    pixels = np.asarray(pixels, np.float64).reshape(-1, 2)
    return np.asarray(_pycolmap_camera(camera).cam_from_img(pixels), np.float64)


# -- logging ----------------------------------------------------------------------------------
@contextlib.contextmanager
def colmap_log_level(verbose: bool = False):
    """COLMAP logs every step at INFO level to stderr: keep only its errors unless verbose."""
    pycolmap = _pycolmap()
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = previous if verbose else max(previous, 2)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


# -- databases ----------------------------------------------------------------------------------
def _new_database(path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)  # a database is always rebuilt from the HDF5 stores
    return _pycolmap().Database.open(str(path))


def create_database_from_reconstruction(path: str | Path, reconstruction) -> dict[str, int]:
    """A new COLMAP database holding the cameras, rigs, frames and images of
    `reconstruction` with their ids (no keypoints yet). Returns image ids by name."""
    db = _new_database(Path(path))
    try:
        for camera in reconstruction.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in reconstruction.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in reconstruction.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in reconstruction.images.values():
            db.write_image(image, use_image_id=True)
    finally:
        db.close()
    return {image.name: int(image_id) for image_id, image in reconstruction.images.items()}


def create_database_from_images(
    path: str | Path, image_dir: str | Path, names: list[str], single_camera: bool = True,
    camera_model: str = "SIMPLE_RADIAL",
) -> dict[str, int]:
    """A new COLMAP database with the images `names` under `image_dir` and cameras guessed
    by COLMAP (EXIF focal length, else 1.2 x the longer side). Returns image ids by name."""
    pycolmap = _pycolmap()
    path = Path(path)
    _new_database(path).close()
    options = pycolmap.ImageReaderOptions()
    options.camera_model = camera_model
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO
    with colmap_log_level():
        pycolmap.import_images(str(path), str(image_dir), mode, list(names), options)
    db = pycolmap.Database.open(str(path))
    try:
        return {image.name: int(image.image_id) for image in db.read_all_images()}
    finally:
        db.close()


def import_keypoints(path: str | Path, keypoints: Mapping[int, np.ndarray]) -> None:
    """Write [N, 2] keypoints (COLMAP pixel convention) per image id."""
    db = _pycolmap().Database.open(str(path))
    try:
        for image_id, points in keypoints.items():
            db.write_keypoints(int(image_id), np.asarray(points, np.float32).reshape(-1, 2))
    finally:
        db.close()


def import_matches(
    path: str | Path, matches: Iterable[tuple[int, int, np.ndarray]], verified: bool = False
) -> int:
    """Write [K, 2] keypoint index matches per image-id pair. With `verified`, they are also
    written as the pair's verified (inlier) matches, so COLMAP's own verification is not
    needed (e.g. when they were checked against known poses). Returns the pair count."""
    pycolmap = _pycolmap()
    db = pycolmap.Database.open(str(path))
    count = 0
    try:
        for id0, id1, pair_matches in matches:
            pair_matches = np.ascontiguousarray(np.asarray(pair_matches).reshape(-1, 2), np.uint32)
            db.write_matches(int(id0), int(id1), pair_matches)
            if verified:
                geometry = pycolmap.TwoViewGeometry()
                geometry.inlier_matches = pair_matches
                geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
                db.write_two_view_geometry(int(id0), int(id1), geometry)
            count += 1
    finally:
        db.close()
    return count


def verify_matches(
    path: str | Path, pairs_file: str | Path, max_error_px: float = 4.0,
    max_num_trials: int = 20000, min_inlier_ratio: float = 0.1, seed: int = 0,
) -> None:
    """COLMAP's two-view geometric verification of the matches of the listed pairs (hloc's
    settings: 20,000 RANSAC trials, minimum inlier ratio 0.1)."""
    pycolmap = _pycolmap()
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.max_error = float(max_error_px)
    options.ransac.max_num_trials = int(max_num_trials)
    options.ransac.min_inlier_ratio = float(min_inlier_ratio)
    options.ransac.random_seed = int(seed)
    with colmap_log_level():
        pycolmap.verify_matches(str(path), str(pairs_file), options)


def num_verified_pairs(path: str | Path) -> int:
    db = _pycolmap().Database.open(str(path))
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


# -- triangulation and SfM -------------------------------------------------------------------
def _mapper_options(min_angle_deg: float, max_reproj_error_px: float, seed: int, num_threads: int,
                    two_view_tracks: bool = False):
    pycolmap = _pycolmap()
    options = pycolmap.IncrementalPipelineOptions()
    options.triangulation.ignore_two_view_tracks = not two_view_tracks
    options.triangulation.min_angle = float(min_angle_deg)
    options.triangulation.merge_max_reproj_error = float(max_reproj_error_px)
    options.triangulation.complete_max_reproj_error = float(max_reproj_error_px)
    options.mapper.filter_max_reproj_error = float(max_reproj_error_px)
    options.mapper.filter_min_tri_angle = float(min_angle_deg)
    options.random_seed = int(seed)
    options.num_threads = int(num_threads)
    return options


def triangulate_points(
    reconstruction, database_path: str | Path, image_dir: str | Path, output_dir: str | Path,
    min_angle_deg: float = 1.5, max_reproj_error_px: float = 4.0, seed: int = 0,
    num_threads: int = -1, verbose: bool = False, two_view_tracks: bool = True,
):
    """COLMAP's point triangulation with the poses and intrinsics of `reconstruction` kept
    fixed (the database's verified matches give the tracks). `two_view_tracks`: also
    triangulate points seen in only two images (COLMAP ignores them by default; with matches
    already checked against known poses they are reliable and cover images that overlap
    with a single neighbour). Returns the new `pycolmap.Reconstruction` (also written to
    `output_dir`)."""
    pycolmap = _pycolmap()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    options = _mapper_options(min_angle_deg, max_reproj_error_px, seed, num_threads,
                              two_view_tracks)
    with colmap_log_level(verbose):
        return pycolmap.triangulate_points(
            reconstruction, str(database_path), str(image_dir), str(output_dir),
            clear_points=True, options=options, refine_intrinsics=False,
        )


def incremental_mapping(
    database_path: str | Path, image_dir: str | Path, output_dir: str | Path,
    min_angle_deg: float = 1.5, max_reproj_error_px: float = 4.0, seed: int = 0,
    num_threads: int = -1, verbose: bool = False,
):
    """COLMAP's incremental SfM; returns the model with the most registered images, or None
    when nothing could be reconstructed."""
    pycolmap = _pycolmap()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    options = _mapper_options(min_angle_deg, max_reproj_error_px, seed, num_threads)
    with colmap_log_level(verbose):
        models = pycolmap.incremental_mapping(
            str(database_path), str(image_dir), str(output_dir), options=options
        )
    if not models:
        return None
    return max(models.values(), key=lambda rec: rec.num_reg_images())


def registered_image_names(reconstruction) -> list[str]:
    return sorted(reconstruction.images[i].name for i in reconstruction.reg_image_ids())


# -- absolute pose -------------------------------------------------------------------------------
def estimate_absolute_pose(
    points2D: np.ndarray,
    points3D: np.ndarray,
    camera: ColmapCamera,
    max_error_px: float = 12.0,
    min_inlier_ratio: float = 0.01,
    max_num_trials: int = 10000,
    confidence: float = 0.99999,
    seed: int = 0,
    refine: bool = True,
) -> dict | None:
    """P3P LO-RANSAC + non-linear refinement (`pycolmap.estimate_and_refine_absolute_pose`).

    Args:
        points2D: [K, 2] pixels in COLMAP's convention (`featloc.io.colmap.to_colmap_pixels`).
        points3D: [K, 3] world points. camera: the query camera (COLMAP convention).
        max_error_px: RANSAC reprojection threshold (hloc: 12 px).
    Returns:
        None on failure, else {"cam_from_world": Pose, "num_inliers": int, "inlier_mask":
        [K] bool}.
    """
    pycolmap = _pycolmap()
    points2D = np.ascontiguousarray(np.asarray(points2D, np.float64).reshape(-1, 2))
    points3D = np.ascontiguousarray(np.asarray(points3D, np.float64).reshape(-1, 3))
    if len(points2D) < 4:
        return None
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.ransac.max_error = float(max_error_px)
    estimation.ransac.min_inlier_ratio = float(min_inlier_ratio)
    estimation.ransac.max_num_trials = int(max_num_trials)
    estimation.ransac.confidence = float(confidence)
    estimation.ransac.random_seed = int(seed)
    with colmap_log_level():
        if refine:
            result = pycolmap.estimate_and_refine_absolute_pose(
                points2D, points3D, _pycolmap_camera(camera), estimation,
                pycolmap.AbsolutePoseRefinementOptions(),
            )
        else:
            result = pycolmap.estimate_absolute_pose(
                points2D, points3D, _pycolmap_camera(camera), estimation
            )
    if result is None:
        return None
    matrix = np.asarray(result["cam_from_world"].matrix(), np.float64)
    return {
        "cam_from_world": Pose(matrix[:, :3], matrix[:, 3]),
        "num_inliers": int(result["num_inliers"]),
        "inlier_mask": np.asarray(result["inlier_mask"], bool).reshape(-1),
    }
