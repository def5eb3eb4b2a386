"""Every pycolmap call of the project lives here (its API changes between releases).

Written against pycolmap 4.x (`Reconstruction.read_text/write_text`, `Camera.img_from_cam`,
`Camera.cam_from_img`); rigs and frames are created by pycolmap when it reads a text model
without rigs.txt/frames.txt. Values cross this boundary in COLMAP's pixel convention; use
`featloc.io.colmap` to convert.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .colmap import ColmapCamera, ColmapModel, read_model, write_model

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
