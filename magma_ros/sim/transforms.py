"""Rigid transforms in plain numpy: poses, quaternions (x, y, z, w), URDF roll-pitch-yaw.

No pybullet here, so the maths is unit-testable on its own and shared by the description
parser, the camera model and the servo loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def _frozen(values: ArrayLike, shape: tuple[int, ...], what: str) -> FloatArray:
    array = np.array(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite, got {array.tolist()}")
    array.flags.writeable = False
    return array


def quat_normalize(q: ArrayLike) -> FloatArray:
    """Unit quaternion with w >= 0 (one canonical sign for each rotation)."""
    q = np.asarray(q, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if norm < 1e-12:
        raise ValueError("a zero quaternion is not a rotation")
    q = q / norm
    return -q if q[3] < 0 else q


def quat_multiply(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """Hamilton product a * b of quaternions in (x, y, z, w) order."""
    ax, ay, az, aw = np.asarray(a, dtype=np.float64)
    bx, by, bz, bw = np.asarray(b, dtype=np.float64)
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def quat_conjugate(q: ArrayLike) -> FloatArray:
    """Inverse rotation of a unit quaternion."""
    x, y, z, w = np.asarray(q, dtype=np.float64)
    return np.array([-x, -y, -z, w])


def quat_from_rpy(roll: float, pitch: float, yaw: float) -> FloatArray:
    """URDF roll-pitch-yaw (fixed axes X, then Y, then Z: R = Rz(yaw) Ry(pitch) Rx(roll))."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ]
    )


def quat_from_axis_angle(axis: ArrayLike, angle: float) -> FloatArray:
    """Rotation by ``angle`` radians about the unit ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    return np.append(axis * np.sin(angle / 2), np.cos(angle / 2))


def quat_to_matrix(q: ArrayLike) -> FloatArray:
    """3x3 rotation matrix of a unit quaternion (x, y, z, w)."""
    x, y, z, w = quat_normalize(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(m: ArrayLike) -> FloatArray:
    """Unit quaternion (x, y, z, w) of a 3x3 rotation matrix (Shepperd's method)."""
    m = np.asarray(m, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    return quat_normalize(q)


def rotation_vector(q: ArrayLike) -> FloatArray:
    """Axis * angle (radians, in [0, pi]) of a unit quaternion: the log map."""
    x, y, z, w = quat_normalize(q)
    vector = np.array([x, y, z])
    sin_half = float(np.linalg.norm(vector))
    if sin_half < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, w)
    return vector / sin_half * angle


def yaw_of(q: ArrayLike) -> float:
    """Heading (rotation about z, radians) of the x axis of a rotation, projected on the xy plane."""
    m = quat_to_matrix(q)
    return float(np.arctan2(m[1, 0], m[0, 0]))


@dataclass(frozen=True, eq=False)
class Pose:
    """A rigid transform: position (metres) and unit quaternion (x, y, z, w).

    Read as "the pose of a child frame in its parent frame"; ``a.compose(b)`` is ``a * b``.
    The arrays are read-only copies.
    """

    position: FloatArray = field(default_factory=lambda: np.zeros(3))
    orientation: FloatArray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", _frozen(self.position, (3,), "Pose.position"))
        orientation = _frozen(self.orientation, (4,), "Pose.orientation")
        normalized = quat_normalize(orientation)
        normalized.flags.writeable = False
        object.__setattr__(self, "orientation", normalized)

    @classmethod
    def identity(cls) -> Pose:
        return cls()

    @classmethod
    def from_xyz_rpy(cls, xyz: ArrayLike, rpy: ArrayLike) -> Pose:
        roll, pitch, yaw = np.asarray(rpy, dtype=np.float64)
        return cls(np.asarray(xyz, dtype=np.float64), quat_from_rpy(roll, pitch, yaw))

    @classmethod
    def from_matrix(cls, matrix: ArrayLike) -> Pose:
        m = np.asarray(matrix, dtype=np.float64)
        return cls(m[:3, 3], matrix_to_quat(m[:3, :3]))

    def rotation(self) -> FloatArray:
        """3x3 rotation matrix."""
        return quat_to_matrix(self.orientation)

    def matrix(self) -> FloatArray:
        """4x4 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.rotation()
        m[:3, 3] = self.position
        return m

    def compose(self, other: Pose) -> Pose:
        """``self * other``: ``other`` expressed in ``self``'s parent frame."""
        position = self.position + self.rotation() @ other.position
        return Pose(position, quat_multiply(self.orientation, other.orientation))

    def inverse(self) -> Pose:
        rotation_t = self.rotation().T
        return Pose(-rotation_t @ self.position, quat_conjugate(self.orientation))

    def transform_points(self, points: ArrayLike) -> FloatArray:
        """Map points (N x 3 or 3) from the child frame into the parent frame."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.rotation().T + self.position

    def as_tuple(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """Plain floats (position, quaternion xyzw), e.g. for messages or pybullet calls."""
        return tuple(self.position.tolist()), tuple(self.orientation.tolist())  # type: ignore[return-value]

    def __repr__(self) -> str:
        p = ", ".join(f"{v:.4f}" for v in self.position)
        q = ", ".join(f"{v:.4f}" for v in self.orientation)
        return f"Pose(position=[{p}], orientation=[{q}])"
