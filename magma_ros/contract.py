"""The one source of truth for magma_ros topics, message types, QoS and node parameters.

Nodes, the simulator, the recorder, the dataset builder, the launch files and the
tests all read names from here; no topic string literal appears anywhere else.
ROS-free on purpose: message types are named as strings ("sensor_msgs/msg/Image")
and resolved by the ROS layer, so the training code and the tests can read this
module without rclpy.

Node parameters are typed dataclasses. Each field is one ROS parameter (same name,
same default, the field's ``description`` metadata becomes the parameter
descriptor); ``__post_init__`` rejects bad values with a message naming them. The
YAML files under ``config/`` use exactly these names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

QosName = Literal["sensor_data", "reliable", "latched"]


class ContractError(ValueError):
    """A parameter value or parameter file does not fit the contract."""


@dataclass(frozen=True)
class Topic:
    """A topic: default name, message type, QoS profile name and meaning."""

    name: str
    type: str
    qos: QosName
    description: str


# ---------------------------------------------------------------------------------
# Topics. Cameras follow the realsense2_camera / image_pipeline naming users know.
CAMERA_IMAGE = Topic("/camera/color/image_raw", "sensor_msgs/msg/Image", "sensor_data",
                     "RGB camera frames the policy acts on")
CAMERA_IMAGE_COMPRESSED = Topic("/camera/color/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                "sensor_data", "the same frames, JPEG/PNG compressed")
CAMERA_INFO = Topic("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo", "sensor_data",
                    "intrinsics of the RGB camera")
CAMERA_DEPTH = Topic("/camera/aligned_depth_to_color/image_raw", "sensor_msgs/msg/Image", "sensor_data",
                     "depth aligned to the RGB camera (16UC1 mm or 32FC1 m)")
WRIST_IMAGE = Topic("/wrist_camera/color/image_raw", "sensor_msgs/msg/Image", "sensor_data",
                    "optional wrist camera frames")
JOINT_STATES = Topic("/joint_states", "sensor_msgs/msg/JointState", "reliable", "arm and gripper joints")
EE_POSE = Topic("/ee_pose", "geometry_msgs/msg/PoseStamped", "reliable",
                "current end-effector pose in the robot base frame")
CLOCK = Topic("/clock", "rosgraph_msgs/msg/Clock", "reliable", "simulated or replayed time")

INSTRUCTION = Topic("/magma/instruction", "std_msgs/msg/String", "latched",
                    "language instruction for the policy (latched: late joiners get the last one)")
PREDICTION = Topic("/magma/prediction", "magma_ros/msg/Prediction", "reliable",
                   "everything inferred from one frame: action, marks, traces, timings")
EE_DELTA = Topic("/magma/ee_delta", "magma_ros/msg/EndEffectorDelta", "reliable",
                 "decoded 7-DoF end-effector step in the robot base frame")
ANNOTATED_IMAGE = Topic("/magma/annotated_image", "sensor_msgs/msg/Image", "sensor_data",
                        "camera frame with marks and traces drawn, source stamp")
TRACE_MARKERS = Topic("/magma/trace_markers", "visualization_msgs/msg/MarkerArray", "reliable",
                      "one LINE_STRIP per predicted trace, for RViz")
DIAGNOSTICS = Topic("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "reliable",
                    "rates, latencies, dropped and rejected frames")

SERVO_TWIST = Topic("/servo_node/delta_twist_cmds", "geometry_msgs/msg/TwistStamped", "reliable",
                    "MoveIt Servo Cartesian velocity command (speed units)")
GRIPPER_TRAJECTORY = Topic("/gripper_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory",
                           "reliable", "gripper open/close as a one-point joint trajectory")
ESTOP = Topic("/magma/estop", "std_msgs/msg/Bool", "reliable",
              "true latches an emergency stop in the bridge until its reset service is called")

# Services, relative to the node that offers them.
SET_INSTRUCTION_SERVICE = "~/set_instruction"   # magma_ros/srv/SetInstruction (policy node)
RESET_ESTOP_SERVICE = "~/reset_estop"           # std_srvs/srv/Trigger (servo bridge)
GO_HOME_SERVICE = "~/go_home"                   # std_srvs/srv/Trigger (servo bridge, MoveItPy only)

TOPICS: dict[str, Topic] = {
    name: value for name, value in list(globals().items()) if isinstance(value, Topic)
}


def _param(default: Any, description: str, **kwargs: Any) -> Any:
    """A dataclass field that is also a ROS parameter with a description."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"description": description},
                     **kwargs)
    return field(default=default, metadata={"description": description}, **kwargs)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


class NodeParameters:
    """Base of the per-node parameter dataclasses."""

    NODE_NAME: str = ""

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "parameters") -> NodeParameters:
        """Build from a name -> value mapping, rejecting names the node does not have."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ContractError(f"{source}: unknown parameter(s) for {cls.NODE_NAME}: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def descriptions(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("description", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class PolicyNodeParameters(NodeParameters):
    """Parameters of ``magma_policy_node``."""

    NODE_NAME = "magma_policy_node"

    checkpoint: str = _param("", "Magma checkpoint directory; '' = the embedded magma-tiny default")
    backend: str = _param("torch", "inference backend: torch | onnxruntime | tensorrt | none")
    dtype: str = _param("float32", "weights dtype: float32 | bfloat16 | float16")
    device: str = _param("cpu", "torch device, e.g. cpu or cuda:0")
    statistics: str = _param("bridge_orig", "q01/q99 action statistics set used to un-normalize actions")
    image_topic: str = _param(CAMERA_IMAGE.name, "camera topic (sensor_msgs/Image)")
    compressed_image_topic: str = _param("", "camera topic (sensor_msgs/CompressedImage); '' = not used")
    camera_info_topic: str = _param("", "CameraInfo for back-projecting traces; '' = not used")
    depth_topic: str = _param("", "depth aligned to the camera; '' = not used")
    instruction: str = _param("pick up the red cube", "language instruction (also settable by topic/service)")
    instruction_topic: str = _param(INSTRUCTION.name, "std_msgs/String topic that updates the instruction")
    prediction_topic: str = _param(PREDICTION.name, "output: magma_ros/Prediction")
    ee_delta_topic: str = _param(EE_DELTA.name, "output: magma_ros/EndEffectorDelta")
    annotated_image_topic: str = _param(ANNOTATED_IMAGE.name, "output: camera frame with marks/traces drawn")
    trace_markers_topic: str = _param(TRACE_MARKERS.name, "output: visualization_msgs/MarkerArray")
    base_frame: str = _param("base_link", "robot base frame; frame_id of EndEffectorDelta")
    control_rate_hz: float = _param(5.0, "maximum action rate; 0 = act on every frame the model keeps up with")
    step_period_s: float = _param(0.2, "time one decoded step is meant to take (EndEffectorDelta.step_period)")
    trace_period_s: float = _param(0.0, "run a Trace-of-Mark query at most this often (s); 0 = never")
    trace_steps: int = _param(8, "future steps asked for in a Trace-of-Mark query")
    trace_marker_depth_m: float = _param(0.8, "depth used for 3-D trace markers when no depth image is available")
    max_observation_age_s: float = _param(0.5, "frames older than this (image stamp vs now) are never acted on")
    sampling_temperature: float = _param(0.0, "0 = greedy decoding; > 0 samples (reference: 0.7)")
    gripper_open_threshold: float = _param(0.6, "gripper hysteresis: open when the command rises above this")
    gripper_close_threshold: float = _param(0.4, "gripper hysteresis: close when the command falls below this")
    diagnostics_period_s: float = _param(1.0, "period of the diagnostics status (s)")
    autostart: bool = _param(False, "configure and activate on start (otherwise wait for lifecycle commands)")

    def __post_init__(self) -> None:
        _require(self.backend in ("torch", "onnxruntime", "tensorrt", "none"),
                 f"backend must be torch, onnxruntime, tensorrt or none, got {self.backend!r}")
        _require(self.dtype in ("float32", "bfloat16", "float16"),
                 f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        _require(bool(self.image_topic or self.compressed_image_topic),
                 "one of image_topic / compressed_image_topic must be set")
        _require(self.control_rate_hz >= 0 and math.isfinite(self.control_rate_hz),
                 f"control_rate_hz must be >= 0, got {self.control_rate_hz}")
        _require(self.step_period_s > 0, f"step_period_s must be > 0, got {self.step_period_s}")
        _require(self.trace_period_s >= 0, f"trace_period_s must be >= 0, got {self.trace_period_s}")
        _require(1 <= self.trace_steps <= 32, f"trace_steps must be in 1..32, got {self.trace_steps}")
        _require(self.max_observation_age_s > 0,
                 f"max_observation_age_s must be > 0, got {self.max_observation_age_s}")
        _require(self.sampling_temperature >= 0,
                 f"sampling_temperature must be >= 0, got {self.sampling_temperature}")
        _require(0 <= self.gripper_close_threshold <= self.gripper_open_threshold <= 1,
                 "need 0 <= gripper_close_threshold <= gripper_open_threshold <= 1, got "
                 f"{self.gripper_close_threshold} / {self.gripper_open_threshold}")
        _require(bool(self.base_frame), "base_frame must not be empty")


@dataclass
class SyntheticCameraParameters(NodeParameters):
    """Parameters of ``synthetic_camera_node`` (a moving test pattern, for demos and tests)."""

    NODE_NAME = "synthetic_camera_node"

    image_topic: str = _param(CAMERA_IMAGE.name, "output: sensor_msgs/Image")
    frame_id: str = _param("camera_color_optical_frame", "frame_id of the published images")
    width: int = _param(640, "image width (px)")
    height: int = _param(480, "image height (px)")
    encoding: str = _param("rgb8", "rgb8 | bgr8 | rgba8 | bgra8 | mono8")
    rate_hz: float = _param(30.0, "publish rate")
    max_frames: int = _param(0, "stop publishing after this many frames; 0 = never")

    def __post_init__(self) -> None:
        _require(self.width > 0 and self.height > 0, f"image size must be positive, got {self.width}x{self.height}")
        _require(self.encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"),
                 f"unsupported synthetic encoding {self.encoding!r}")
        _require(self.rate_hz > 0, f"rate_hz must be > 0, got {self.rate_hz}")
        _require(self.max_frames >= 0, f"max_frames must be >= 0, got {self.max_frames}")


PARAMETER_CLASSES: dict[str, type[NodeParameters]] = {
    cls.NODE_NAME: cls for cls in (PolicyNodeParameters, SyntheticCameraParameters)
}
