"""Posed image sets in the kapture format (NAVER LABS), written with the `kapture` library.

Layout written by `write_kapture(root, ...)`:
    root/sensors/sensors.txt          one camera per distinct intrinsics (COLMAP model names)
    root/sensors/trajectories.txt     timestamp, device_id, qw qx qy qz tx ty tz (cam_from_world)
    root/sensors/records_camera.txt   timestamp, device_id, image path
    root/sensors/records_data/        the images (a symlink to the image folder when possible)
Camera parameters are written in COLMAP's pixel convention, converted by `featloc.io.colmap`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
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


def read_kapture_poses(root: str | Path) -> tuple[dict[str, Camera], dict[str, Pose]]:
    """(cameras, cam_from_world poses) per image name of a kapture folder (the camera
    models of `featloc.geometry.camera` only)."""
    import kapture
    from kapture.io.csv import kapture_from_dir

    from .colmap import ColmapCamera, camera_from_colmap

    data = kapture_from_dir(str(root))
    cameras, poses = {}, {}
    for timestamp, sensor, name in kapture.flatten(data.records_camera):
        cam = data.sensors[sensor]
        params = [float(v) for v in cam.camera_params]
        model = cam.camera_type.value if hasattr(cam.camera_type, "value") else str(cam.camera_type)
        cameras[name] = camera_from_colmap(
            ColmapCamera(0, model, int(params[0]), int(params[1]), params[2:])
        )
        pose = data.trajectories[timestamp, sensor]
        poses[name] = Pose.from_qt(pose.r_raw, pose.t_raw)
    return cameras, poses
