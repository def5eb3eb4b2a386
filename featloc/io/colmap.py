"""COLMAP text models (cameras.txt, images.txt, points3D.txt) and pose text files.

This is the ONLY module that converts between the project's pixel convention (the centre of
the top-left pixel is (0, 0)) and COLMAP's (the top-left pixel *corner* is (0, 0)): COLMAP
coordinates are ours + 0.5. Everything read from or written to COLMAP goes through
`to_colmap_pixels` / `from_colmap_pixels` and `camera_to_colmap` / `camera_from_colmap`.

The `Colmap*` dataclasses hold a text model as stored (COLMAP pixel convention, any COLMAP
camera model). Poses are `cam_from_world` (world to camera), quaternions (qw, qx, qy, qz).
COLMAP >= 3.12 also writes rigs.txt and frames.txt; they are ignored on read (images.txt still
holds every image pose) and not written (COLMAP reads a model without them).

Pose text files (Aachen / visuallocalization.net submissions, hloc results) hold one
`name qw qx qy qz tx ty tz` line per image, cam_from_world.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry.camera import CAMERA_MODELS, Camera
from ..geometry.pose import Pose

logger = logging.getLogger(__name__)

# COLMAP's pixel origin is the corner of the top-left pixel; ours is its centre.
COLMAP_PIXEL_SHIFT = 0.5
INVALID_POINT3D_ID = -1
# A stored rotation quaternion whose norm is further than this from 1 is not a rotation (a
# hand-edited or corrupt file); COLMAP itself normalises silently, strict readers refuse it.
QUATERNION_NORM_TOL = 1e-3


class ColmapFormatError(ValueError):
    """A COLMAP text file is malformed. The message names the file and line."""


def check_rotation_quaternion(qvec, where: str) -> None:
    """Raise ValueError naming `where` unless (qw, qx, qy, qz) is a unit quaternion (within
    `QUATERNION_NORM_TOL`), i.e. a rotation as stored by COLMAP and kapture."""
    q = np.asarray(qvec, np.float64).reshape(-1)
    norm = float(np.linalg.norm(q)) if q.size == 4 and np.isfinite(q).all() else float("nan")
    if not abs(norm - 1.0) <= QUATERNION_NORM_TOL:
        raise ValueError(
            f"{where}: the pose is not a rotation (quaternion {q.tolist()} has norm {norm:.6g}, "
            f"expected 1 within {QUATERNION_NORM_TOL:g})"
        )


def to_colmap_pixels(points: np.ndarray) -> np.ndarray:
    """[N, 2] keypoints in the project convention -> COLMAP convention (+0.5)."""
    return np.asarray(points, np.float64) + COLMAP_PIXEL_SHIFT


def from_colmap_pixels(points: np.ndarray) -> np.ndarray:
    """[N, 2] COLMAP pixel coordinates -> the project convention (-0.5)."""
    return np.asarray(points, np.float64) - COLMAP_PIXEL_SHIFT


@dataclass
class ColmapCamera:
    """A camera as stored by COLMAP. params: COLMAP order and pixel convention."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def __post_init__(self):
        self.params = np.asarray(self.params, np.float64).reshape(-1)


@dataclass
class ColmapImage:
    """An image as stored by COLMAP.

    Attributes:
        points2D: [N, 2] float64 keypoints, COLMAP pixel convention.
        point3D_ids: [N] int64, -1 where the keypoint has no 3D point.
    """

    id: int
    cam_from_world: Pose
    camera_id: int
    name: str
    points2D: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self):
        self.points2D = np.asarray(self.points2D, np.float64).reshape(-1, 2)
        self.point3D_ids = np.asarray(self.point3D_ids, np.int64).reshape(-1)
        if len(self.points2D) != len(self.point3D_ids):
            raise ValueError(
                f"image {self.name}: {len(self.points2D)} points2D, {len(self.point3D_ids)} ids"
            )


@dataclass
class ColmapPoint3D:
    """A 3D point. track: [L, 2] int64 (image_id, point2D_idx)."""

    id: int
    xyz: np.ndarray
    rgb: np.ndarray = field(default_factory=lambda: np.zeros(3, np.uint8))
    error: float = 0.0
    track: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    def __post_init__(self):
        self.xyz = np.asarray(self.xyz, np.float64).reshape(3)
        self.rgb = np.asarray(self.rgb, np.uint8).reshape(3)
        self.track = np.asarray(self.track, np.int64).reshape(-1, 2)


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera] = field(default_factory=dict)
    images: dict[int, ColmapImage] = field(default_factory=dict)
    points3D: dict[int, ColmapPoint3D] = field(default_factory=dict)

    def image_by_name(self, name: str) -> ColmapImage:
        for image in self.images.values():
            if image.name == name:
                return image
        raise KeyError(f"no image named {name!r} in the model")


# -- cameras in the project convention ------------------------------------------------------
def _principal_point_index(model: str) -> int:
    return 2 if model in ("PINHOLE", "OPENCV") else 1


def camera_to_colmap(camera: Camera, camera_id: int = 1) -> ColmapCamera:
    """A `Camera` (project convention) as a COLMAP camera (principal point + 0.5)."""
    params = np.array(camera.params, np.float64)
    i = _principal_point_index(camera.model)
    params[i : i + 2] += COLMAP_PIXEL_SHIFT
    return ColmapCamera(camera_id, camera.model, camera.width, camera.height, params)


def camera_from_colmap(camera: ColmapCamera) -> Camera:
    """A COLMAP camera as a `Camera` (principal point - 0.5). Only the models of
    `featloc.geometry.camera.CAMERA_MODELS` are supported."""
    if camera.model not in CAMERA_MODELS:
        raise ValueError(
            f"camera {camera.id}: model {camera.model} is not supported "
            f"(supported: {', '.join(CAMERA_MODELS)})"
        )
    params = np.array(camera.params, np.float64)
    i = _principal_point_index(camera.model)
    params[i : i + 2] -= COLMAP_PIXEL_SHIFT
    return Camera(camera.model, camera.width, camera.height, params)


# -- text IO ---------------------------------------------------------------------------------
def _fmt(value) -> str:
    # repr() of a Python float is the shortest string that reads back exactly.
    return repr(float(value))


def _data_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, line) of every non-comment line, empty lines included (images.txt uses
    an empty line for an image without keypoints)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.lstrip().startswith("#"):
                continue
            yield lineno, line


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_cameras_text(path: str | Path) -> dict[int, ColmapCamera]:
    path = Path(path)
    cameras = {}
    for lineno, line in _data_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        try:
            camera_id, model = int(tokens[0]), tokens[1]
            width, height = int(tokens[2]), int(tokens[3])
            params = [float(v) for v in tokens[4:]]
        except (ValueError, IndexError):
            raise ColmapFormatError(
                f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]', got {line[:80]!r}"
            ) from None
        if model in CAMERA_MODELS and len(params) != len(CAMERA_MODELS[model]):
            raise ColmapFormatError(
                f"{path}:{lineno}: {model} takes {len(CAMERA_MODELS[model])} params, got {len(params)}"
            )
        cameras[camera_id] = ColmapCamera(camera_id, model, width, height, params)
    return cameras


def write_cameras_text(cameras: Mapping[int, ColmapCamera], path: str | Path) -> Path:
    path = Path(path)
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for cam in sorted(cameras.values(), key=lambda c: c.id):
        params = " ".join(_fmt(v) for v in cam.params)
        lines.append(f"{cam.id} {cam.model} {cam.width} {cam.height} {params}")
    _write_text(path, "\n".join(lines) + "\n")
    return path


def read_images_text(path: str | Path, strict_rotations: bool = False) -> dict[int, ColmapImage]:
    """Read images.txt. With `strict_rotations`, a quaternion that is not of unit norm is an
    error naming the file, line and image (by default it is normalised, as COLMAP does)."""
    path = Path(path)
    images = {}
    lines = list(_data_lines(path))
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        if not line.strip():
            i += 1
            continue
        # The name is the last field and may contain spaces.
        tokens = line.split(maxsplit=9)
        try:
            image_id = int(tokens[0])
            qt = [float(v) for v in tokens[1:8]]
            camera_id, name = int(tokens[8]), tokens[9].strip()
        except (ValueError, IndexError):
            raise ColmapFormatError(
                f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', "
                f"got {line[:80]!r}"
            ) from None
        if strict_rotations:
            try:
                check_rotation_quaternion(qt[:4], f"{path}:{lineno}: image {name!r}")
            except ValueError as exc:
                raise ColmapFormatError(str(exc)) from None
        points_line = lines[i + 1][1] if i + 1 < len(lines) else ""
        values = points_line.split()
        if len(values) % 3:
            raise ColmapFormatError(
                f"{path}:{lineno + 1}: POINTS2D must be triplets (X, Y, POINT3D_ID)"
            )
        try:
            triplets = np.array([float(v) for v in values], np.float64).reshape(-1, 3)
        except ValueError:
            raise ColmapFormatError(f"{path}:{lineno + 1}: non-numeric POINTS2D") from None
        images[image_id] = ColmapImage(
            image_id,
            Pose.from_qt(qt[:4], qt[4:]),
            camera_id,
            name,
            triplets[:, :2],
            triplets[:, 2].astype(np.int64),
        )
        i += 2
    return images


def write_images_text(images: Mapping[int, ColmapImage], path: str | Path) -> Path:
    path = Path(path)
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}",
    ]
    for image in sorted(images.values(), key=lambda im: im.id):
        pose = image.cam_from_world
        qt = " ".join(_fmt(v) for v in (*pose.qvec, *pose.t))
        lines.append(f"{image.id} {qt} {image.camera_id} {image.name}")
        lines.append(
            " ".join(
                f"{_fmt(x)} {_fmt(y)} {int(pid)}"
                for (x, y), pid in zip(image.points2D, image.point3D_ids, strict=True)
            )
        )
    _write_text(path, "\n".join(lines) + "\n")
    return path


def read_points3D_text(path: str | Path) -> dict[int, ColmapPoint3D]:
    path = Path(path)
    points = {}
    for lineno, line in _data_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        try:
            point_id = int(tokens[0])
            xyz = [float(v) for v in tokens[1:4]]
            rgb = [int(v) for v in tokens[4:7]]
            error = float(tokens[7])
            track = [int(v) for v in tokens[8:]]
            if len(xyz) != 3 or len(rgb) != 3 or len(track) % 2:
                raise ValueError
        except (ValueError, IndexError):
            raise ColmapFormatError(
                f"{path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]', got {line[:80]!r}"
            ) from None
        points[point_id] = ColmapPoint3D(point_id, xyz, rgb, error, np.reshape(track, (-1, 2)))
    return points


def write_points3D_text(points: Mapping[int, ColmapPoint3D], path: str | Path) -> Path:
    path = Path(path)
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(points)}",
    ]
    for p in sorted(points.values(), key=lambda p: p.id):
        track = " ".join(f"{int(a)} {int(b)}" for a, b in p.track)
        xyz = " ".join(_fmt(v) for v in p.xyz)
        rgb = " ".join(str(int(v)) for v in p.rgb)
        lines.append(f"{p.id} {xyz} {rgb} {_fmt(p.error)} {track}".rstrip())
    _write_text(path, "\n".join(lines) + "\n")
    return path


def read_model(path: str | Path, strict_rotations: bool = False) -> ColmapModel:
    """Read cameras.txt, images.txt and (if present) points3D.txt from a folder
    (`strict_rotations`: see `read_images_text`)."""
    path = Path(path)
    for required in ("cameras.txt", "images.txt"):
        if not (path / required).is_file():
            raise FileNotFoundError(f"{path}: no {required} (a COLMAP text model is expected)")
    points = path / "points3D.txt"
    return ColmapModel(
        read_cameras_text(path / "cameras.txt"),
        read_images_text(path / "images.txt", strict_rotations),
        read_points3D_text(points) if points.is_file() else {},
    )


def write_model(model: ColmapModel, path: str | Path) -> Path:
    """Write the model as cameras.txt, images.txt and points3D.txt into a folder."""
    path = Path(path)
    write_cameras_text(model.cameras, path / "cameras.txt")
    write_images_text(model.images, path / "images.txt")
    write_points3D_text(model.points3D, path / "points3D.txt")
    return path


def model_from_views(
    cameras: Mapping[str, Camera], poses: Mapping[str, Pose], share_cameras: bool = True
) -> ColmapModel:
    """A model without 3D points from per-image cameras and cam_from_world poses (keyed by
    image name; images are numbered in sorted name order). Identical cameras are shared."""
    model = ColmapModel()
    ids: dict[tuple, int] = {}
    for image_id, name in enumerate(sorted(poses), 1):
        cam = camera_to_colmap(cameras[name])
        key = (cam.model, cam.width, cam.height, tuple(cam.params))
        if key not in ids or not share_cameras:
            ids[key] = len(model.cameras) + 1
            cam.id = ids[key]
            model.cameras[cam.id] = cam
        model.images[image_id] = ColmapImage(image_id, poses[name], ids[key], name)
    return model


# -- pose text files -----------------------------------------------------------------------
def format_pose_line(name: str, cam_from_world: Pose) -> str:
    """'name qw qx qy qz tx ty tz' (cam_from_world)."""
    values = " ".join(_fmt(v) for v in (*cam_from_world.qvec, *cam_from_world.t))
    return f"{name} {values}"


def parse_pose_line(line: str) -> tuple[str, Pose]:
    """Inverse of `format_pose_line`; the name may contain spaces."""
    tokens = line.strip().rsplit(maxsplit=7)
    if len(tokens) != 8:
        raise ValueError(f"expected 'name qw qx qy qz tx ty tz', got {line.strip()[:80]!r}")
    values = [float(v) for v in tokens[1:]]
    return tokens[0], Pose.from_qt(values[:4], values[4:])


def read_poses(path: str | Path) -> dict[str, Pose]:
    """Read a pose text file ('#' comments and empty lines allowed)."""
    path = Path(path)
    poses = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                name, pose = parse_pose_line(line)
            except ValueError as exc:
                raise ColmapFormatError(f"{path}:{lineno}: {exc}") from None
            if name in poses:
                logger.warning("%s:%d: duplicate pose for %s (the last one is kept)", path, lineno, name)
            poses[name] = pose
    return poses


def write_poses(path: str | Path, poses: Mapping[str, Pose]) -> Path:
    path = Path(path)
    _write_text(path, "".join(format_pose_line(n, p) + "\n" for n, p in poses.items()))
    return path


# -- query lists -----------------------------------------------------------------------------
def read_query_list(path: str | Path) -> dict[str, ColmapCamera]:
    """hloc's query list with intrinsics: one `name MODEL WIDTH HEIGHT PARAMS[]` per line
    (COLMAP camera models and pixel convention; '#' comments). Returns cameras by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: query list not found")
    cameras: dict[str, ColmapCamera] = {}
    for lineno, line in _data_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        try:
            name, model = tokens[0], tokens[1]
            width, height = int(tokens[2]), int(tokens[3])
            params = [float(v) for v in tokens[4:]]
        except (ValueError, IndexError):
            raise ColmapFormatError(
                f"{path}:{lineno}: expected 'NAME MODEL WIDTH HEIGHT PARAMS[]', got {line[:80]!r}"
            ) from None
        if model in CAMERA_MODELS and len(params) != len(CAMERA_MODELS[model]):
            raise ColmapFormatError(
                f"{path}:{lineno}: {model} takes {len(CAMERA_MODELS[model])} params, got {len(params)}"
            )
        if name in cameras:
            raise ColmapFormatError(f"{path}:{lineno}: {name} is listed twice")
        cameras[name] = ColmapCamera(len(cameras) + 1, model, width, height, params)
    if not cameras:
        raise ColmapFormatError(f"{path}: the query list is empty")
    return cameras


def write_query_list(path: str | Path, cameras: Mapping[str, Camera]) -> Path:
    """Write `name MODEL WIDTH HEIGHT PARAMS[]` lines (COLMAP convention) for `Camera`s."""
    lines = []
    for name, camera in cameras.items():
        cam = camera_to_colmap(camera)
        lines.append(f"{name} {cam.model} {cam.width} {cam.height} "
                     + " ".join(_fmt(v) for v in cam.params))
    path = Path(path)
    _write_text(path, "\n".join(lines) + "\n")
    return path
