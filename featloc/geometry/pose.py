"""Rigid transforms. Naming rule: `T_0to1` maps camera-0 coordinates to camera-1 coordinates;
absolute poses are `cam_from_world`. Quaternions are (qw, qx, qy, qz), COLMAP's order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """(qw, qx, qy, qz) -> [3, 3] rotation (the quaternion is normalised first)."""
    q = np.asarray(q, np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> (qw, qx, qy, qz) with qw >= 0."""
    R = np.asarray(R, np.float64)
    # Shepperd's method: pick the largest of the four squared components for stability.
    m = np.array(
        [
            1 + R[0, 0] + R[1, 1] + R[2, 2],
            1 + R[0, 0] - R[1, 1] - R[2, 2],
            1 - R[0, 0] + R[1, 1] - R[2, 2],
            1 - R[0, 0] - R[1, 1] + R[2, 2],
        ]
    )
    i = int(np.argmax(m))
    s = 2 * np.sqrt(max(m[i], 1e-300))
    if i == 0:
        q = [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif i == 1:
        q = [(R[2, 1] - R[1, 2]) / s, s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif i == 2:
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s]
    else:
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def is_rotation(R: np.ndarray, tol: float = 1e-4) -> bool:
    R = np.asarray(R, np.float64)
    return (
        R.shape == (3, 3)
        and bool(np.all(np.isfinite(R)))
        and np.allclose(R @ R.T, np.eye(3), atol=tol)
        and abs(np.linalg.det(R) - 1) < tol
    )


@dataclass(frozen=True)
class Pose:
    """A rigid transform x' = R x + t.

    Attributes:
        R: [3, 3] rotation. t: [3] translation.
    """

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "R", np.asarray(self.R, np.float64).reshape(3, 3))
        object.__setattr__(self, "t", np.asarray(self.t, np.float64).reshape(3))

    @classmethod
    def identity(cls) -> Pose:
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> Pose:
        T = np.asarray(T, np.float64)
        return cls(T[:3, :3], T[:3, 3])

    @classmethod
    def from_qt(cls, qvec: np.ndarray, tvec: np.ndarray) -> Pose:
        return cls(quaternion_to_rotation(qvec), tvec)

    @property
    def qvec(self) -> np.ndarray:
        return rotation_to_quaternion(self.R)

    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    def inv(self) -> Pose:
        return Pose(self.R.T, -self.R.T @ self.t)

    def __matmul__(self, other: Pose) -> Pose:
        """Composition: (self @ other)(x) = self(other(x))."""
        return Pose(self.R @ other.R, self.R @ other.t + self.t)

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Apply to [N, 3] points."""
        return np.asarray(points, np.float64) @ self.R.T + self.t

    @property
    def center(self) -> np.ndarray:
        """For a cam_from_world pose: the camera centre in world coordinates."""
        return -self.R.T @ self.t


def relative_pose(cam0_from_world: Pose, cam1_from_world: Pose) -> Pose:
    """T_0to1 (camera-0 coordinates to camera-1 coordinates) from two absolute poses."""
    return cam1_from_world @ cam0_from_world.inv()


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle (degrees) of a [3, 3] rotation."""
    cos = (np.trace(np.asarray(R, np.float64)) - 1) / 2
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))
