"""The conversions training and serving share, in one ROS-free place.

Serving (the Servo bridge) and training (the dataset builder) must agree on what a 7-DoF
step means, or a trained model learns one thing and the robot does another. Everything
they share lives here, and both call it:

* **delta <-> twist.** A step ``(dx, dy, dz, droll, dpitch, dyaw)`` over a step period ``T``
  is executed as the constant twist ``v = d / T`` in the base frame for ``T`` seconds
  (:func:`delta_to_twist`, :func:`twist_to_delta`). A constant angular velocity ``w`` about
  the base axes for ``T`` turns the end effector by ``exp([w T]x)`` applied on the left, so the
  rotation part of a step is the **rotation vector of the relative rotation
  R_{t+1} R_t^T about the base axes** (:data:`ROTATION_BASE_ROTVEC`, the default). For the
  small steps a policy takes this equals roll/pitch/yaw increments about the base x, y, z
  axes to second order; :data:`ROTATION_BASE_RPY` gives the same relative rotation as
  extrinsic roll-pitch-yaw (the Open-X/Bridge label convention) for datasets that want it.
  :func:`relative_steps` computes labels from poses, :func:`integrate_steps` replays them.
* **gripper opening <-> command <-> joint position.** The opening ``g`` in [0, 1] (1 = open)
  is what a label and an EndEffectorDelta carry; the command is binary (open iff ``g`` is
  above the threshold, with hysteresis on a robot); the joint position is what a gripper
  controller takes (:class:`GripperJoints`).
* **the recorded topic set** (:data:`RECORDED_TOPICS`) and **the episode metadata**
  (:class:`EpisodeMetadata`, ``episode.json`` beside a recorded bag's metadata.yaml).

Quaternions are (x, y, z, w), the ROS order. Nothing here imports rclpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from magma_ros import contract

__all__ = [
    "EPISODE_FILE",
    "RECORDED_TOPICS",
    "ROTATION_BASE_ROTVEC",
    "ROTATION_BASE_RPY",
    "ROTATION_CONVENTIONS",
    "ConventionError",
    "EpisodeMetadata",
    "GripperJoints",
    "delta_to_twist",
    "gripper_command",
    "integrate_steps",
    "pose_deltas",
    "quat_from_rotvec",
    "quat_from_rpy",
    "quat_multiply",
    "quat_to_rotvec",
    "quat_to_rpy",
    "relative_steps",
    "twist_to_delta",
]


class ConventionError(ValueError):
    """A value that does not fit a shared convention (non-finite, wrong shape, unknown name)."""


# ------------------------------------------------------------------------ topics, metadata
RECORDED_TOPICS: tuple[contract.Topic, ...] = (
    contract.CAMERA_IMAGE, contract.CAMERA_DEPTH, contract.CAMERA_INFO, contract.JOINT_STATES, contract.EE_POSE,
    contract.GRIPPER_TRAJECTORY, contract.SERVO_TWIST, contract.INSTRUCTION, contract.SIM_EPISODE,
)
"""Everything a teleop recording of the cell holds (WRIST_IMAGE joins it when the wrist camera is on)."""

EPISODE_FILE = "episode.json"
"""Per-episode metadata, written inside the bag directory next to metadata.yaml."""


@dataclass(frozen=True)
class EpisodeMetadata:
    """What a recorder knows about one episode (``episode.json``); every field is optional on read.

    ``instruction`` is the language instruction; ``success`` whether the episode reached its
    goal (None = unknown); ``control_rate_hz`` the rate the operator commanded at; ``extra``
    keeps any other keys a recorder wrote, so nothing is lost on a round trip.
    """

    instruction: str = ""
    success: bool | None = None
    seed: int | None = None
    task: str = ""
    color: str = ""
    steps: int | None = None
    max_steps: int | None = None
    sim_time_s: float | None = None
    start_time_s: float | None = None
    control_rate_hz: float | None = None
    driver: str = ""
    messages: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "episode metadata") -> EpisodeMetadata:
        if not isinstance(data, Mapping):
            raise ConventionError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        if not isinstance(values.get("instruction", ""), str):
            raise ConventionError(f"{source}: instruction must be a string, got {values['instruction']!r}")
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def write(self, bag_dir: str | Path) -> Path:
        path = Path(bag_dir) / EPISODE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, bag_dir: str | Path) -> EpisodeMetadata | None:
        """The metadata beside a bag (``bag_dir/episode.json``), None when there is none."""
        path = Path(bag_dir) / EPISODE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConventionError(f"{path}: unreadable episode metadata: {err}") from err
        return cls.from_dict(data, str(path))


# --------------------------------------------------------------------- delta <-> twist
ROTATION_BASE_ROTVEC = "base_rotvec"
ROTATION_BASE_RPY = "base_rpy"
ROTATION_CONVENTIONS = (ROTATION_BASE_ROTVEC, ROTATION_BASE_RPY)


def _check_period(step_period_s: float) -> float:
    period = float(step_period_s)
    if not (math.isfinite(period) and period > 0):
        raise ConventionError(f"step period must be a finite number > 0 s, got {step_period_s!r}")
    return period


def _vector(values: Sequence[float] | np.ndarray, n: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape[-1:] != (n,):
        raise ConventionError(f"{what} must have {n} values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConventionError(f"{what} must be finite, got {array.tolist()}")
    return array


def delta_to_twist(delta: Sequence[float] | np.ndarray, step_period_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear m/s, angular rad/s) of the constant base-frame twist that executes a 6-D step in ``T``."""
    d = _vector(delta, 6, "delta")
    period = _check_period(step_period_s)
    return d[..., :3] / period, d[..., 3:6] / period


def twist_to_delta(linear: Sequence[float] | np.ndarray, angular: Sequence[float] | np.ndarray,
                   duration_s: float) -> np.ndarray:
    """The 6-D step a constant twist held for ``duration_s`` executes (inverse of :func:`delta_to_twist`)."""
    period = _check_period(duration_s)
    return np.concatenate([_vector(linear, 3, "linear velocity") * period,
                           _vector(angular, 3, "angular velocity") * period], axis=-1)


# ------------------------------------------------------------------------ quaternions
def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (..., 4) quaternions (x, y, z, w)."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz], axis=-1)


def _conjugate(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) * np.array([-1.0, -1.0, -1.0, 1.0])


def _normalized(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(~np.isfinite(norm)) or np.any(norm < 1e-9):
        raise ConventionError("quaternion with a non-finite or zero norm")
    return q / norm


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, angle in [0, pi]) of (..., 4) unit quaternions."""
    q = _normalized(q)
    q = np.where(q[..., 3:4] < 0, -q, q)  # shortest rotation
    xyz, w = q[..., :3], q[..., 3]
    s = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(s, w)
    small = s < 1e-12
    scale = np.where(small, 2.0 / np.where(w == 0, 1.0, w), angle / np.where(small, 1.0, s))
    return xyz * scale[..., None]


def quat_from_rotvec(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    angle = np.linalg.norm(r, axis=-1)
    half = 0.5 * angle
    small = angle < 1e-12
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(half) / np.where(small, 1.0, angle))
    return np.concatenate([r * scale[..., None], np.cos(half)[..., None]], axis=-1)


def quat_from_rpy(rpy: np.ndarray) -> np.ndarray:
    """Quaternion of extrinsic roll-pitch-yaw about the fixed x, y, z axes (R = Rz(yaw) Ry(pitch) Rx(roll))."""
    rpy = np.asarray(rpy, dtype=np.float64)
    cr, sr = np.cos(rpy[..., 0] / 2), np.sin(rpy[..., 0] / 2)
    cp, sp = np.cos(rpy[..., 1] / 2), np.sin(rpy[..., 1] / 2)
    cy, sy = np.cos(rpy[..., 2] / 2), np.sin(rpy[..., 2] / 2)
    return np.stack([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy], axis=-1)


def quat_to_rpy(q: np.ndarray) -> np.ndarray:
    """Extrinsic roll-pitch-yaw (about fixed x, y, z) of (..., 4) quaternions; inverse of quat_from_rpy."""
    x, y, z, w = np.moveaxis(_normalized(q), -1, 0)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.stack([roll, pitch, yaw], axis=-1)


def _rotation_of(q_rel: np.ndarray, convention: str) -> np.ndarray:
    if convention == ROTATION_BASE_ROTVEC:
        return quat_to_rotvec(q_rel)
    if convention == ROTATION_BASE_RPY:
        return quat_to_rpy(q_rel)
    raise ConventionError(f"unknown rotation convention {convention!r}; expected one of {ROTATION_CONVENTIONS}")


def _quat_of(rotation: np.ndarray, convention: str) -> np.ndarray:
    if convention == ROTATION_BASE_ROTVEC:
        return quat_from_rotvec(rotation)
    if convention == ROTATION_BASE_RPY:
        return quat_from_rpy(rotation)
    raise ConventionError(f"unknown rotation convention {convention!r}; expected one of {ROTATION_CONVENTIONS}")


def relative_steps(positions: np.ndarray, quaternions: np.ndarray,
                   convention: str = ROTATION_BASE_ROTVEC) -> np.ndarray:
    """(N-1, 6) steps between consecutive EE poses in the base frame.

    Translation: ``p[t+1] - p[t]``. Rotation: the relative rotation ``R[t+1] R[t]^T`` (about the
    base axes) as a rotation vector (``base_rotvec``, what the bridge executes) or as extrinsic
    roll/pitch/yaw (``base_rpy``).
    """
    p = _vector(positions, 3, "positions")
    q = _normalized(_vector(quaternions, 4, "quaternions"))
    if p.ndim != 2 or q.shape[0] != p.shape[0]:
        raise ConventionError(f"need (N, 3) positions and (N, 4) quaternions, got {p.shape} and {q.shape}")
    return pose_deltas(p[:-1], q[:-1], p[1:], q[1:], convention)


def pose_deltas(p_from: np.ndarray, q_from: np.ndarray, p_to: np.ndarray, q_to: np.ndarray,
                convention: str = ROTATION_BASE_ROTVEC) -> np.ndarray:
    """(N, 6) steps that take each pose ``(p_from, q_from)`` to ``(p_to, q_to)`` (see :func:`relative_steps`)."""
    q_rel = quat_multiply(_normalized(q_to), _conjugate(_normalized(q_from)))
    return np.concatenate([np.asarray(p_to, dtype=np.float64) - np.asarray(p_from, dtype=np.float64),
                           _rotation_of(q_rel, convention)], axis=-1)


def integrate_steps(position: Sequence[float], quaternion: Sequence[float], steps: np.ndarray,
                    convention: str = ROTATION_BASE_ROTVEC) -> tuple[np.ndarray, np.ndarray]:
    """Replay (N, 6) steps from a start pose: (N+1, 3) positions and (N+1, 4) quaternions."""
    s = np.asarray(steps, dtype=np.float64).reshape(-1, 6)
    positions = np.concatenate([_vector(position, 3, "position")[None], s[:, :3]]).cumsum(axis=0)
    q = _normalized(_vector(quaternion, 4, "quaternion"))
    quats = [q]
    for rel in _quat_of(s[:, 3:6], convention):
        q = _normalized(quat_multiply(rel, q))
        quats.append(q)
    return positions, np.stack(quats)


# ------------------------------------------------------------------------------- gripper
def gripper_command(opening: float, threshold: float = 0.5) -> float:
    """Binary command of an opening in [0, 1]: 1.0 (open) iff ``opening > threshold``, else 0.0."""
    g = float(opening)
    if not math.isfinite(g):
        raise ConventionError(f"gripper opening must be finite, got {opening!r}")
    return 1.0 if g > threshold else 0.0


@dataclass(frozen=True)
class GripperJoints:
    """How a gripper's joint position relates to the opening (0 closed .. 1 open).

    ``open_position`` / ``closed_position``: the joint position of an open / closed gripper
    (per joint; a Panda finger travels 0.04 m, so the fingers are 0.08 m apart when open).
    """

    open_position: float
    closed_position: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.open_position) and math.isfinite(self.closed_position)):
            raise ConventionError(f"gripper positions must be finite, got open={self.open_position!r}, "
                                  f"closed={self.closed_position!r}")
        if self.open_position == self.closed_position:
            raise ConventionError(f"gripper open and closed positions are both {self.open_position}")

    def position(self, command: float) -> float:
        """The joint position a binary command (1 open, 0 closed) sends the gripper to."""
        return self.open_position if command > 0.5 else self.closed_position

    def opening(self, position: float | np.ndarray) -> float | np.ndarray:
        """Opening in [0, 1] of a joint position (linear between closed and open, clipped)."""
        g = (np.asarray(position, dtype=np.float64) - self.closed_position) / (
            self.open_position - self.closed_position)
        g = np.clip(g, 0.0, 1.0)
        return float(g) if g.ndim == 0 else g
