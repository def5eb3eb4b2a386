"""Pinhole cameras with COLMAP's models and parameter order.

Pixel convention: the project's (see `featloc.types`), i.e. the centre of the top-left pixel
is (0, 0), so the principal point of an ideal camera of width w is cx = (w - 1) / 2. COLMAP
puts the pixel *corner* at 0 (cx = w / 2); `featloc.io.colmap` converts, nowhere else.

Models (params in COLMAP order, distortion in normalised image coordinates as in COLMAP):
    SIMPLE_PINHOLE  f, cx, cy
    PINHOLE         fx, fy, cx, cy
    SIMPLE_RADIAL   f, cx, cy, k                x_d = x (1 + k r^2)
    OPENCV          fx, fy, cx, cy, k1, k2, p1, p2
                    x_d = x (1 + k1 r^2 + k2 r^4) + 2 p1 x y + p2 (r^2 + 2 x^2)
                    y_d = y (1 + k1 r^2 + k2 r^4) + p1 (r^2 + 2 y^2) + 2 p2 x y
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pose import Pose

CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}
# Newton iterations of `undistort`; COLMAP uses up to 100 with a 1e-10 step tolerance.
UNDISTORT_MAX_ITERATIONS = 100
UNDISTORT_TOLERANCE = 1e-12


def _points(array, dim: int, name: str) -> np.ndarray:
    array = np.asarray(array, np.float64)
    if array.ndim == 1 and array.shape[0] == dim:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name} must be [N, {dim}], got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Camera:
    """A camera model with COLMAP's names and parameter order (project pixel convention).

    Attributes:
        model: one of `CAMERA_MODELS`.
        width, height: image size in pixels.
        params: [P] float64 parameters in COLMAP order (read-only).
    """

    model: str
    width: int
    height: int
    params: np.ndarray

    def __post_init__(self):
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"unknown camera model {self.model!r}; one of {list(CAMERA_MODELS)}")
        params = np.array(self.params, np.float64).reshape(-1)
        expected = len(CAMERA_MODELS[self.model])
        if len(params) != expected:
            raise ValueError(
                f"{self.model} takes {expected} params {CAMERA_MODELS[self.model]}, got {len(params)}"
            )
        if not np.isfinite(params).all():
            raise ValueError(f"camera params must be finite, got {params.tolist()}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        params.flags.writeable = False
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        return (self.model, self.width, self.height) == (other.model, other.width, other.height) \
            and bool(np.array_equal(self.params, other.params))

    def __hash__(self) -> int:
        return hash((self.model, self.width, self.height, self.params.tobytes()))

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int) -> Camera:
        """A PINHOLE camera from a [3, 3] calibration matrix (skew must be 0)."""
        K = np.asarray(K, np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got {K.shape}")
        if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]):
            raise ValueError("K has a skew term; COLMAP's models have none")
        return cls("PINHOLE", width, height, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> Camera:
        return cls("PINHOLE", width, height, [fx, fy, cx, cy])

    @classmethod
    def from_fov(cls, hfov_deg: float, width: int, height: int) -> Camera:
        """A centred PINHOLE camera with square pixels and the given horizontal field of view."""
        f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2)
        return cls.pinhole(f, f, (width - 1) / 2, (height - 1) / 2, width, height)

    # -- parameters ------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    @property
    def fx(self) -> float:
        return float(self.params[0])

    @property
    def fy(self) -> float:
        return float(self.params[1] if self.model in ("PINHOLE", "OPENCV") else self.params[0])

    @property
    def cx(self) -> float:
        return float(self.params[2] if self.model in ("PINHOLE", "OPENCV") else self.params[1])

    @property
    def cy(self) -> float:
        return float(self.params[3] if self.model in ("PINHOLE", "OPENCV") else self.params[2])

    @property
    def focal(self) -> float:
        """Mean focal length (px)."""
        return 0.5 * (self.fx + self.fy)

    @property
    def distortion(self) -> np.ndarray:
        """(k1, k2, p1, p2) of the equivalent OPENCV model (zeros for pinhole models)."""
        if self.model == "SIMPLE_RADIAL":
            return np.array([self.params[3], 0.0, 0.0, 0.0])
        if self.model == "OPENCV":
            return np.array(self.params[4:8])
        return np.zeros(4)

    @property
    def is_distorted(self) -> bool:
        return bool(np.any(self.distortion != 0))

    @property
    def K(self) -> np.ndarray:
        """[3, 3] calibration matrix (distortion not included)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def _with(self, fx, fy, cx, cy, width, height, distortion=None) -> Camera:
        """Same model family with new intrinsics; SIMPLE_* models become PINHOLE/OPENCV
        when fx != fy, since they cannot hold two focal lengths."""
        k = self.distortion if distortion is None else np.asarray(distortion, np.float64)
        square = abs(fx - fy) <= 1e-12 * max(abs(fx), 1.0)
        if self.model == "SIMPLE_PINHOLE" and square:
            return Camera(self.model, width, height, [fx, cx, cy])
        if self.model == "SIMPLE_RADIAL" and square and k[1:].tolist() == [0, 0, 0]:
            return Camera(self.model, width, height, [fx, cx, cy, k[0]])
        if self.model in ("SIMPLE_PINHOLE", "PINHOLE"):
            return Camera("PINHOLE", width, height, [fx, fy, cx, cy])
        return Camera("OPENCV", width, height, [fx, fy, cx, cy, *k])

    # -- resizing and rotation ---------------------------------------------------------------
    def scale(self, sx: float, sy: float | None = None) -> Camera:
        """The camera of the image resized by (sx, sy) = new size / old size.

        Pixel-centre convention: x' = (x + 0.5) sx - 0.5, so cx' = (cx + 0.5) sx - 0.5.
        The new size is round(width * sx) x round(height * sy).
        """
        sy = sx if sy is None else sy
        if not (sx > 0 and sy > 0):
            raise ValueError(f"scale factors must be > 0, got {sx}, {sy}")
        return self._with(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            max(1, round(self.width * sx)),
            max(1, round(self.height * sy)),
        )

    def resize(self, width: int, height: int) -> Camera:
        """The camera of the image resized to exactly (width, height)."""
        cam = self.scale(width / self.width, height / self.height)
        return Camera(cam.model, width, height, cam.params)

    def rot90(self, k: int = 1) -> Camera:
        """The camera of `np.rot90(image, k)` (k quarter turns counter-clockwise).

        Its frame is `inplane_rotation(k) @ camera frame`; pixels map as, for k = 1,
        x' = y, y' = (width - 1) - x (SuperGlue's `rotate_intrinsics`).
        """
        cam = self
        for _ in range(k % 4):
            k1, k2, p1, p2 = cam.distortion
            # The camera frame turns by X' = Y, Y' = -X: the tangential terms swap.
            cam = cam._with(
                cam.fy, cam.fx, cam.cy, cam.width - 1 - cam.cx, cam.height, cam.width,
                [k1, k2, -p2, p1],
            )
        return cam

    # -- distortion --------------------------------------------------------------------------
    def distort(self, points: np.ndarray) -> np.ndarray:
        """Apply the lens distortion to [N, 2] normalised coordinates."""
        xy = _points(points, 2, "points")
        k1, k2, p1, p2 = self.distortion
        if not (k1 or k2 or p1 or p2):
            return xy.copy()
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        return np.stack(
            [
                x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y,
            ],
            1,
        )

    def undistort(self, points: np.ndarray) -> np.ndarray:
        """Invert `distort` on [N, 2] normalised coordinates (Newton's method, as COLMAP).

        Points where the iteration does not converge (far outside the model's valid
        range) come back as NaN.
        """
        target = _points(points, 2, "points")
        k1, k2, p1, p2 = self.distortion
        if not (k1 or k2 or p1 or p2):
            return target.copy()
        xy = target.copy()
        for _ in range(UNDISTORT_MAX_ITERATIONS):
            x, y = xy[:, 0], xy[:, 1]
            r2 = x * x + y * y
            radial = 1 + k1 * r2 + k2 * r2 * r2
            dradial = 2 * k1 + 4 * k2 * r2  # d radial / d(r2) * 2
            residual = self.distort(xy) - target
            # Analytic Jacobian of the distortion map.
            j00 = radial + x * dradial * x + 2 * p1 * y + 6 * p2 * x
            j01 = x * dradial * y + 2 * p1 * x + 2 * p2 * y
            j10 = y * dradial * x + 2 * p1 * x + 2 * p2 * y
            j11 = radial + y * dradial * y + 6 * p1 * y + 2 * p2 * x
            det = j00 * j11 - j01 * j10
            with np.errstate(divide="ignore", invalid="ignore"):
                dx = (j11 * residual[:, 0] - j01 * residual[:, 1]) / det
                dy = (-j10 * residual[:, 0] + j00 * residual[:, 1]) / det
            xy = xy - np.stack([dx, dy], 1)
            step = np.abs(dx) + np.abs(dy)
            if not np.any(step > UNDISTORT_TOLERANCE):
                break
        bad = ~np.isfinite(xy).all(1) | (np.abs(self.distort(xy) - target).max(1) > 1e-6)
        xy[bad] = np.nan
        return xy

    # -- projection --------------------------------------------------------------------------
    def image_from_normalized(self, points: np.ndarray) -> np.ndarray:
        """[N, 2] normalised coordinates (x/z, y/z) -> [N, 2] pixels (with distortion)."""
        xy = self.distort(points)
        return np.stack([self.fx * xy[:, 0] + self.cx, self.fy * xy[:, 1] + self.cy], 1)

    def normalized_from_image(self, points: np.ndarray) -> np.ndarray:
        """[N, 2] pixels -> [N, 2] undistorted normalised coordinates."""
        uv = _points(points, 2, "points")
        xy = np.stack([(uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy], 1)
        return self.undistort(xy)

    def project(self, points: np.ndarray) -> np.ndarray:
        """[N, 3] points in the camera frame -> [N, 2] pixels; NaN for points with z <= 0."""
        xyz = _points(points, 3, "points")
        z = xyz[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = xyz[:, :2] / np.where(z > 0, z, np.nan)[:, None]
        return self.image_from_normalized(xy)

    def unproject(self, points: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
        """[N, 2] pixels -> [N, 3] camera-frame points: rays with z = 1, or points at the
        given [N] z-depths."""
        xy = self.normalized_from_image(points)
        rays = np.concatenate([xy, np.ones((len(xy), 1))], 1)
        if depth is None:
            return rays
        depth = np.asarray(depth, np.float64).reshape(-1)
        if len(depth) != len(rays):
            raise ValueError(f"{len(depth)} depths for {len(rays)} points")
        return rays * depth[:, None]

    def in_image(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """[N] bool: the pixel lies inside the image, i.e. x in [-0.5, w - 0.5) and the same
        for y (pixel-centre convention), shrunk by `margin` px."""
        uv = _points(points, 2, "points")
        lo = -0.5 + margin
        with np.errstate(invalid="ignore"):
            return (
                (uv[:, 0] >= lo)
                & (uv[:, 0] < self.width - 0.5 - margin)
                & (uv[:, 1] >= lo)
                & (uv[:, 1] < self.height - 0.5 - margin)
            )


def inplane_rotation(k: int) -> Pose:
    """The rotation from a camera frame to the frame of the same camera after `np.rot90(image,
    k)`: k quarter turns about the optical axis (SuperGlue's `rotate_pose_inplane`)."""
    R = np.eye(3)
    quarter = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # X'=Y, Y'=-X
    for _ in range(k % 4):
        R = quarter @ R
    return Pose(R, np.zeros(3))
