"""Posed image sets in the kapture format (NAVER LABS), written with the `kapture` library.

Layout written by `write_kapture(root, ...)`:
    root/sensors/sensors.txt          one camera per distinct intrinsics (COLMAP model names)
    root/sensors/trajectories.txt     timestamp, device_id, qw qx qy qz tx ty tz (cam_from_world)
    root/sensors/records_camera.txt   timestamp, device_id, image path
    root/sensors/records_data/        the images (a symlink to the image folder when possible)
`read_kapture` also reads rigs (sensors/rigs.txt: trajectories given per rig are composed
with the rig's sensor poses) and validates the stored rotations.
Camera parameters are written in COLMAP's pixel convention, converted by `featloc.io.colmap`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..geometry.camera import Camera
from ..geometry.pose import Pose
from .colmap import camera_to_colmap

logger = logging.getLogger(__name__)


def write_kapture(
    root: str | Path,
    cameras: Mapping[str, Camera],
    poses: Mapping[str, Pose],
    image_dir: str | Path | None = None,
) -> Path:
    """Write per-image cameras and cam_from_world poses (keyed by image name) as kapture.

    Timestamps are the image indices in sorted name order. With `image_dir`, records_data is
    a relative symlink to it (no copy).
    """
    import kapture
    from kapture.io.csv import kapture_to_dir

    root = Path(root)
    sensors, trajectories, records = kapture.Sensors(), kapture.Trajectories(), kapture.RecordsCamera()
    sensor_ids: dict[tuple, str] = {}
    for timestamp, name in enumerate(sorted(poses)):
        cam = camera_to_colmap(cameras[name])
        key = (cam.model, cam.width, cam.height, tuple(cam.params))
        if key not in sensor_ids:
            sensor_ids[key] = f"cam{len(sensor_ids)}"
            sensors[sensor_ids[key]] = kapture.Camera(
                cam.model, [cam.width, cam.height, *map(float, cam.params)], name=sensor_ids[key]
            )
        sensor = sensor_ids[key]
        pose = poses[name]
        trajectories[timestamp, sensor] = kapture.PoseTransform(
            r=[float(v) for v in pose.qvec], t=[float(v) for v in pose.t]
        )
        records[timestamp, sensor] = name
    kapture_to_dir(str(root), kapture.Kapture(
        sensors=sensors, trajectories=trajectories, records_camera=records
    ))
    if image_dir is not None:
        link = root / "sensors" / "records_data"
        if not link.exists() and not link.is_symlink():
            try:
                link.symlink_to(os.path.relpath(Path(image_dir).resolve(), link.parent.resolve()))
            except OSError as exc:  # e.g. file systems without symlinks
                logger.warning("%s: could not link the images (%s)", link, exc)
    return root


@dataclass
class KaptureImages:
    """The camera images of a kapture folder.

    Attributes:
        image_dir: root of the image names (sensors/records_data).
        cameras: `Camera` (project pixel convention) per image name.
        poses: cam_from_world per image name, for the images that have one (rig poses are
            composed with the rig's sensor poses).
        names: every image name, in record order.
    """

    image_dir: Path
    cameras: dict[str, Camera]
    poses: dict[str, Pose]
    names: list[str] = field(default_factory=list)


def _camera_of(sensor, where: str) -> Camera:
    from .colmap import ColmapCamera, camera_from_colmap

    params = [float(v) for v in sensor.camera_params]
    model = sensor.camera_type.value if hasattr(sensor.camera_type, "value") else str(sensor.camera_type)
    try:
        return camera_from_colmap(ColmapCamera(0, model, int(params[0]), int(params[1]), params[2:]))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_kapture(root: str | Path, strict_rotations: bool = True) -> KaptureImages:
    """Cameras and cam_from_world poses of the camera records of a kapture folder.

    Rigs (sensors/rigs.txt) are supported: a trajectory given for a rig is composed with the
    rig's sensor poses (`kapture.rigs_remove_inplace`). With `strict_rotations`, a stored
    quaternion (trajectory or rig) that is not of unit norm is an error naming the file and
    the image (kapture keeps such quaternions as written). Camera models: those of
    `featloc.geometry.camera`.
    """
    import kapture
    from kapture.io.csv import kapture_from_dir

    from .colmap import check_rotation_quaternion

    root = Path(root)
    sensors_dir = root / "sensors"
    if not (sensors_dir / "sensors.txt").is_file():
        raise FileNotFoundError(f"{root}: no sensors/sensors.txt (a kapture folder is expected)")
    data = kapture_from_dir(str(root))
    if data.records_camera is None or data.sensors is None:
        raise ValueError(f"{root}: no camera records (sensors/records_camera.txt)")
    records = list(kapture.flatten(data.records_camera))
    names_at: dict[tuple, list[str]] = {}
    for timestamp, sensor, name in records:
        names_at.setdefault((timestamp, sensor), []).append(name)
    rigs = data.rigs if data.rigs is not None else kapture.Rigs()
    trajectories = data.trajectories
    if strict_rotations and trajectories is not None:
        for timestamp, device, pose in kapture.flatten(trajectories):
            names = names_at.get((timestamp, device)) or [
                n for sid in rigs.get(device, {}) for n in names_at.get((timestamp, sid), [])
            ]
            what = f"image {names[0]!r}" if names else f"device {device!r}"
            check_rotation_quaternion(
                pose.r_raw, f"{sensors_dir / 'trajectories.txt'}: timestamp {timestamp}, {what}"
            )
        for rig_id, sensor_id, pose in kapture.flatten(rigs):
            check_rotation_quaternion(
                pose.r_raw, f"{sensors_dir / 'rigs.txt'}: rig {rig_id!r}, sensor {sensor_id!r}"
            )
    if trajectories is not None and len(rigs):
        trajectories = kapture.rigs_remove(trajectories, rigs)
    cameras, poses, names = {}, {}, []
    for timestamp, sensor, name in records:
        if name in cameras:
            raise ValueError(f"{sensors_dir / 'records_camera.txt'}: image {name!r} recorded twice")
        cameras[name] = _camera_of(data.sensors[sensor], f"{sensors_dir / 'sensors.txt'}: {sensor}")
        names.append(name)
        if trajectories is not None and (timestamp, sensor) in trajectories:
            pose = trajectories[timestamp, sensor]
            poses[name] = Pose.from_qt(pose.r_raw, pose.t_raw)
    return KaptureImages(sensors_dir / "records_data", cameras, poses, names)


def read_kapture_poses(root: str | Path) -> tuple[dict[str, Camera], dict[str, Pose]]:
    """(cameras, cam_from_world poses) per image name of a kapture folder (the camera
    models of `featloc.geometry.camera` only; rigs composed, see `read_kapture`)."""
    data = read_kapture(root, strict_rotations=False)
    return data.cameras, data.poses
