"""Dataset specs: one YAML file per robot saying how its rosbag2 recordings become training steps.

The same spec is read by the dataset builder and checked against a bringup (policy node and
Servo bridge parameters), so training and serving cannot drift on what they share: the
statistics name, the step period, the base frame, the camera and the gripper. Example
(``config/datasets/sim_panda.yaml``; ``config/datasets/template.yaml`` documents every field)::

    name: sim_panda                      # dataset / statistics name
    control_rate_hz: 10.0                # steps per second; the step period is its inverse
    base_frame: panda_link0
    rotation_convention: base_rotvec     # or base_rpy (magma_ros.conventions)
    image: {topic: /camera/color/image_raw, size: 256, format: png}
    state: {source: pose, topic: /ee_pose}          # or {source: tf, ee_frame: ...}
    gripper: {source: command, topic: /gripper_controller/joint_trajectory,
              joints: [panda_finger_joint1, panda_finger_joint2], open_position: 0.04, closed_position: 0.0}
    instruction: {source: metadata}      # or {source: topic, topic: ...} or {source: fixed, text: ...}
    alignment: {max_skew_s: 0.05, stamps: header}

Bad specs raise :class:`SpecError` naming the file and the field. ROS-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from magma_ros import contract
from magma_ros.conventions import ROTATION_BASE_ROTVEC, ROTATION_CONVENTIONS, GripperJoints
from magma_ros.training.records import DatasetError

__all__ = [
    "SERVED_FRAME_SIZE",
    "AlignmentSpec",
    "DatasetSpec",
    "GripperSpec",
    "ImageSpec",
    "InstructionSpec",
    "SpecError",
    "SpecMismatchError",
    "StateSpec",
    "check_serving",
    "load_spec",
]

STATE_SOURCES = ("pose", "tf", "joint_states")
GRIPPER_SOURCES = ("command", "joint_position", "bool", "float")
INSTRUCTION_SOURCES = ("topic", "metadata", "fixed")
STAMP_SOURCES = ("header", "recorded")


SERVED_FRAME_SIZE = 256
"""The square size the policy resizes camera frames to before acting (magma_ros.model.policy's
DEFAULT_ACTION_FRAME_SIZE; kept here so this check needs no torch; a test keeps them equal)."""


class SpecError(DatasetError):
    """A dataset spec is malformed; the message names the file and the field."""


class SpecMismatchError(SpecError):
    """A spec and a serving configuration (policy node, Servo bridge) disagree."""


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def _positive(value: float, name: str) -> None:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
          f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class ImageSpec:
    """The camera: ``topic`` (sensor_msgs/Image or CompressedImage, told apart by the bag's type),
    ``size`` the square side frames are resized to (0 = keep), ``format`` png | jpeg on disk."""

    topic: str = contract.CAMERA_IMAGE.name
    size: int = 256
    format: str = "png"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        _need(bool(self.topic), "image.topic must not be empty")
        _need(isinstance(self.size, int) and 0 <= self.size <= 4096, f"image.size must be 0..4096, got {self.size!r}")
        _need(self.format in ("png", "jpeg"), f"image.format must be png or jpeg, got {self.format!r}")
        _need(isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100,
              f"image.jpeg_quality must be 1..100, got {self.jpeg_quality!r}")


@dataclass(frozen=True)
class StateSpec:
    """Where the EE pose comes from.

    ``pose``: a geometry_msgs/PoseStamped ``topic`` in the base frame. ``tf``: /tf and /tf_static
    composed ``base_frame`` -> ``ee_frame``. ``joint_states``: sensor_msgs/JointState on
    ``joint_states_topic`` through the robot's ``urdf`` (forward kinematics by pybullet) to the
    link ``ee_frame``, expressed in the link ``base_frame``.
    """

    source: str = "pose"
    topic: str = contract.EE_POSE.name
    ee_frame: str = ""
    tf_topics: tuple[str, ...] = ("/tf", "/tf_static")
    joint_states_topic: str = contract.JOINT_STATES.name
    urdf: str = ""

    def __post_init__(self) -> None:
        _need(self.source in STATE_SOURCES, f"state.source must be one of {STATE_SOURCES}, got {self.source!r}")
        _need(self.source != "pose" or bool(self.topic), "state.topic is required for state.source pose")
        _need(self.source == "pose" or bool(self.ee_frame), f"state.ee_frame is required for state.source "
                                                           f"{self.source}")
        _need(self.source != "joint_states" or bool(self.urdf), "state.urdf is required for state.source "
                                                                "joint_states")
        _need(self.source != "joint_states" or Path(self.urdf).expanduser().is_file(),
              f"state.urdf {self.urdf!r} is not a file")
        object.__setattr__(self, "tf_topics", tuple(self.tf_topics))


@dataclass(frozen=True)
class GripperSpec:
    """Where the gripper label comes from; the label is the opening in [0, 1] (1 = open).

    ``command``: trajectory_msgs/JointTrajectory commands on ``topic`` (the first point's
    position of the first of ``joints`` it names, mapped with open/closed_position); the label
    of a step is the command in force during it. ``joint_position``: the finger joint position
    in sensor_msgs/JointState on ``topic`` (sum over ``joints`` when ``sum_joints``), binarized
    with hysteresis (``open_threshold`` / ``close_threshold`` on the opening) at the end of the
    step. ``bool``: std_msgs/Bool, ``open_value`` says which value means open. ``float``:
    std_msgs/Float32/64 mapped with open/closed_position. ``initial_open``: before any sample.
    """

    source: str = "command"
    topic: str = contract.GRIPPER_TRAJECTORY.name
    joints: tuple[str, ...] = ()
    open_position: float = 1.0
    closed_position: float = 0.0
    sum_joints: bool = False
    open_threshold: float = 0.6
    close_threshold: float = 0.4
    open_value: bool = True
    initial_open: bool = True

    def __post_init__(self) -> None:
        _need(self.source in GRIPPER_SOURCES, f"gripper.source must be one of {GRIPPER_SOURCES}, "
                                              f"got {self.source!r}")
        _need(bool(self.topic), "gripper.topic must not be empty")
        object.__setattr__(self, "joints", tuple(self.joints))
        _need(self.source != "joint_position" or bool(self.joints),
              "gripper.joints must name the finger joint(s) for source joint_position")
        _need(0 <= self.close_threshold < self.open_threshold <= 1,
              f"need 0 <= gripper.close_threshold < gripper.open_threshold <= 1, got "
              f"{self.close_threshold} / {self.open_threshold}")
        try:
            GripperJoints(float(self.open_position), float(self.closed_position))
        except ValueError as err:
            raise SpecError(f"gripper: {err}") from err

    @property
    def mapping(self) -> GripperJoints:
        return GripperJoints(float(self.open_position), float(self.closed_position))


@dataclass(frozen=True)
class InstructionSpec:
    """The language instruction: a std_msgs/String ``topic``, the episode ``metadata``
    (``episode.json`` beside the bag), or a ``fixed`` ``text``."""

    source: str = "metadata"
    topic: str = contract.INSTRUCTION.name
    text: str = ""

    def __post_init__(self) -> None:
        _need(self.source in INSTRUCTION_SOURCES, f"instruction.source must be one of {INSTRUCTION_SOURCES}, "
                                                  f"got {self.source!r}")
        _need(self.source != "fixed" or bool(self.text.strip()), "instruction.text is required for source fixed")
        _need(self.source != "topic" or bool(self.topic), "instruction.topic is required for source topic")


@dataclass(frozen=True)
class AlignmentSpec:
    """Time alignment: each step takes, per input, the nearest earlier sample no older than
    ``max_skew_s``; a step whose input is missing or older is dropped and counted. ``stamps``:
    ``header`` (message header stamps; the bag's recording time for messages without one) or
    ``recorded`` (the bag's recording time for everything)."""

    max_skew_s: float = 0.05
    stamps: str = "header"

    def __post_init__(self) -> None:
        _positive(self.max_skew_s, "alignment.max_skew_s")
        _need(self.stamps in STAMP_SOURCES, f"alignment.stamps must be one of {STAMP_SOURCES}, got {self.stamps!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """One robot's recordings -> training steps (see the module docstring)."""

    name: str
    control_rate_hz: float
    base_frame: str
    image: ImageSpec = field(default_factory=ImageSpec)
    state: StateSpec = field(default_factory=StateSpec)
    gripper: GripperSpec = field(default_factory=GripperSpec)
    instruction: InstructionSpec = field(default_factory=InstructionSpec)
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)
    rotation_convention: str = ROTATION_BASE_ROTVEC
    only_successful: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        from magma_ros.training.dataset import _NAME

        _need(isinstance(self.name, str) and bool(_NAME.match(self.name)),
              f"name must be letters, digits, '_', '.', '-' (it names the statistics), got {self.name!r}")
        _positive(self.control_rate_hz, "control_rate_hz")
        _need(self.control_rate_hz <= 1000, f"control_rate_hz must be <= 1000, got {self.control_rate_hz}")
        _need(isinstance(self.base_frame, str) and bool(self.base_frame), "base_frame must not be empty")
        _need(self.rotation_convention in ROTATION_CONVENTIONS,
              f"rotation_convention must be one of {ROTATION_CONVENTIONS}, got {self.rotation_convention!r}")
        _need(self.alignment.max_skew_s < self.step_period_s,
              f"alignment.max_skew_s ({self.alignment.max_skew_s}) must be below the step period "
              f"({self.step_period_s:g} s)")

    @property
    def step_period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return _plain(data)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "spec") -> DatasetSpec:
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a dataset spec must be a mapping")
        try:
            values = _fields(cls, data, "")
            return cls(**values, source=source)
        except SpecError as err:
            raise SpecError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise SpecError(f"{source}: {err}") from None


_SECTIONS = {"image": ImageSpec, "state": StateSpec, "gripper": GripperSpec,
             "instruction": InstructionSpec, "alignment": AlignmentSpec}


def _fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)} - {"source" if cls is DatasetSpec else ""}
    unknown = sorted(set(data) - known)
    _need(not unknown, f"unknown field(s) {', '.join(prefix + u for u in unknown)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if cls is DatasetSpec and key in _SECTIONS:
            _need(isinstance(value, dict), f"{key} must be a mapping")
            values[key] = _SECTIONS[key](**_fields(_SECTIONS[key], value, key + "."))
        else:
            values[key] = value
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a YAML dataset spec."""
    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise SpecError(f"cannot read dataset spec {file}: {err}") from err
    except yaml.YAMLError as err:
        raise SpecError(f"{file}: not valid YAML: {' '.join(str(err).split())}") from err
    return DatasetSpec.from_mapping(data, str(file))


# ----------------------------------------------------------------- serving consistency
def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def check_serving(spec: DatasetSpec, policy: contract.PolicyNodeParameters | None = None,
                  bridge: contract.ServoBridgeParameters | None = None, where: str = "bringup") -> None:
    """Refuse a serving configuration that disagrees with the spec the model was trained on.

    Checked: the policy's ``statistics`` (the dataset name), ``step_period_s`` (the spec's step
    period), ``base_frame``, camera topic and frame size; the bridge's ``base_frame`` and, for a gripper
    commanded by JointTrajectory, its joints and open/closed positions. Raises
    :class:`SpecMismatchError` listing every disagreement.
    """
    problems: list[str] = []
    if policy is not None:
        if policy.statistics != spec.name:
            problems.append(f"policy statistics {policy.statistics!r} != dataset name {spec.name!r}")
        if not _close(policy.step_period_s, spec.step_period_s):
            problems.append(f"policy step_period_s {policy.step_period_s:g} != the spec's step period "
                            f"{spec.step_period_s:g} s (control_rate_hz {spec.control_rate_hz:g})")
        if policy.base_frame != spec.base_frame:
            problems.append(f"policy base_frame {policy.base_frame!r} != spec base_frame {spec.base_frame!r}")
        if spec.image.size != SERVED_FRAME_SIZE:
            problems.append(f"spec image.size {spec.image.size} != {SERVED_FRAME_SIZE}, the size the policy "
                            "resizes frames to")
        camera = policy.compressed_image_topic or policy.image_topic
        if camera != spec.image.topic:
            problems.append(f"policy camera {camera!r} != spec image.topic {spec.image.topic!r}")
    if bridge is not None:
        if bridge.base_frame != spec.base_frame:
            problems.append(f"bridge base_frame {bridge.base_frame!r} != spec base_frame {spec.base_frame!r}")
        g = spec.gripper
        if bridge.gripper_enabled and g.source == "command":
            if g.joints and tuple(bridge.gripper_joint_names) != g.joints:
                problems.append(f"bridge gripper_joint_names {list(bridge.gripper_joint_names)} != spec "
                                f"gripper.joints {list(g.joints)}")
            if not (_close(bridge.gripper_open_position, g.open_position)
                    and _close(bridge.gripper_closed_position, g.closed_position)):
                problems.append(f"bridge gripper open/closed position {bridge.gripper_open_position:g}/"
                                f"{bridge.gripper_closed_position:g} != spec {g.open_position:g}/"
                                f"{g.closed_position:g}")
    if problems:
        raise SpecMismatchError(f"{where} disagrees with dataset spec {spec.source or spec.name}: "
                                + "; ".join(problems))
