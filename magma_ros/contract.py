"""The one source of truth for magma_ros topics, message types, QoS and node parameters.

Nodes, the simulator, the recorder, the dataset builder, the launch files and the
tests all read names from here; no topic string literal appears anywhere else.
ROS-free on purpose: message types are named as strings ("sensor_msgs/msg/Image")
and resolved by the ROS layer, so the training code and the tests can read this
module without rclpy.

Node parameters are typed dataclasses. Each field is one ROS parameter (same name,
same default, the field's ``description`` metadata becomes the parameter
descriptor); ``__post_init__`` rejects bad values with a message naming them. The
YAML files under ``config/`` use exactly these names. A field marked ``live`` may be
set while the node runs (``ros2 param set``): the whole set is re-validated and the
node applies it; every other field is read-only at run time and a change is refused.
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


GRIPPER_HOLD_MAX = 1000
"""The longest gripper dwell (``gripper_min_hold_steps``) the policy node accepts."""


def _param(default: Any, description: str, live: bool = False, **kwargs: Any) -> Any:
    """A dataclass field that is also a ROS parameter with a description; ``live``: settable at run time."""
    metadata = {"description": description, "live": live}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


class NodeParameters:
    """Base of the per-node parameter dataclasses."""

    NODE_NAME: str = ""

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "parameters") -> NodeParameters:
        """Build from a name -> value mapping, rejecting names the node does not have.

        ``use_sim_time`` (every rclpy node's own parameter) is accepted and left to rclpy.
        """
        values = {k: v for k, v in values.items() if k != "use_sim_time"}
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ContractError(f"{source}: unknown parameter(s) for {cls.NODE_NAME}: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def descriptions(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("description", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def live_parameters(cls) -> tuple[str, ...]:
        """Parameters that may change while the node runs; all others are read-only at run time."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("live"))  # type: ignore[arg-type]

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
    execution_provider: str = _param("", "onnxruntime execution provider: cpu | cuda | tensorrt; '' = from device")
    export_dir: str = _param("", "ONNX export for onnxruntime/tensorrt; '' = cached export, made on first use")
    engine_cache_dir: str = _param("", "TensorRT engine cache directory; '' = ~/.cache/magma_ros/engines")
    engine_file_path: str = _param("", "TensorRT: prefill engine file to load or write; '' = from the cache")
    force_engine_update: bool = _param(False, "TensorRT: rebuild engines even when a cached one matches")
    precision: str = _param("", "TensorRT precision: fp32 | fp16 | bf16 | int8 | int4; '' = fp16")
    verify_backend: bool = _param(False, "check parity with PyTorch (same greedy tokens, logits cosine >= 0.999) "
                                         "at configure; fail configure otherwise")
    num_threads: int = _param(0, "CPU threads of the onnxruntime backend; 0 = runtime default")
    image_topic: str = _param(CAMERA_IMAGE.name, "camera topic (sensor_msgs/Image)")
    compressed_image_topic: str = _param("", "camera topic (sensor_msgs/CompressedImage); '' = not used")
    camera_info_topic: str = _param("", "CameraInfo for back-projecting traces; '' = not used")
    depth_topic: str = _param("", "depth aligned to the camera; '' = not used")
    instruction: str = _param("pick up the red cube", "language instruction (also settable by topic/service)",
                              live=True)
    instruction_topic: str = _param(INSTRUCTION.name, "std_msgs/String topic that updates the instruction")
    prediction_topic: str = _param(PREDICTION.name, "output: magma_ros/Prediction")
    ee_delta_topic: str = _param(EE_DELTA.name, "output: magma_ros/EndEffectorDelta")
    annotated_image_topic: str = _param(ANNOTATED_IMAGE.name, "output: camera frame with marks/traces drawn")
    trace_markers_topic: str = _param(TRACE_MARKERS.name, "output: visualization_msgs/MarkerArray")
    base_frame: str = _param("base_link", "robot base frame; frame_id of EndEffectorDelta")
    control_rate_hz: float = _param(5.0, "maximum action rate; 0 = act on every frame the model keeps up with")
    action_thread: bool = _param(True, "run the model on its own thread, on the newest frame; false = in the "
                                       "camera callback, on every frame (a synchronous simulator, which waits "
                                       "for each answer: no hand-over between threads)")
    step_period_s: float = _param(0.2, "time one decoded step is meant to take (EndEffectorDelta.step_period)")
    trace_period_s: float = _param(0.0, "run a Trace-of-Mark query at most this often (s); 0 = never")
    trace_steps: int = _param(8, "future steps asked for in a Trace-of-Mark query")
    trace_marker_depth_m: float = _param(0.8, "depth used for 3-D trace markers when no depth image is available")
    max_observation_age_s: float = _param(0.5, "frames older than this (image stamp vs now) are never acted on")
    sampling_temperature: float = _param(0.0, "0 = greedy decoding; > 0 samples (reference: 0.7)")
    gripper_open_threshold: float = _param(0.6, "gripper hysteresis: open when the command rises above this")
    gripper_close_threshold: float = _param(0.4, "gripper hysteresis: close when the command falls below this")
    gripper_min_hold_steps: int = _param(0, "gripper dwell: after the command changes, keep it for this many more "
                                            "actions whatever the model says (0 = off; a new instruction ends it)")
    diagnostics_period_s: float = _param(1.0, "period of the diagnostics status (s)")
    autostart: bool = _param(False, "configure and activate on start (otherwise wait for lifecycle commands)")

    def __post_init__(self) -> None:
        _require(self.backend in ("torch", "onnxruntime", "tensorrt", "none"),
                 f"backend must be torch, onnxruntime, tensorrt or none, got {self.backend!r}")
        _require(self.execution_provider in ("", "cpu", "cuda", "tensorrt"),
                 f"execution_provider must be cpu, cuda, tensorrt or '', got {self.execution_provider!r}")
        _require(self.precision in ("", "fp32", "fp16", "bf16", "int8", "int4"),
                 f"precision must be fp32, fp16, bf16, int8, int4 or '', got {self.precision!r}")
        _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
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
        _require(0 <= self.gripper_min_hold_steps <= GRIPPER_HOLD_MAX,
                 f"gripper_min_hold_steps must be in 0..{GRIPPER_HOLD_MAX}, got {self.gripper_min_hold_steps}")
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


# The servo bridge's debug output (relative to the node): every accepted command after the safety
# filter, geometry_msgs/msg/TwistStamped in speed units, stamped with the source camera stamp.
FILTERED_TWIST_TOPIC = "~/filtered_twist"


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        _require(math.isfinite(value) and value > 0, f"{name} must be a finite number > 0, got {value}")


@dataclass
class ServoBridgeParameters(NodeParameters):
    """Parameters of ``servo_bridge_node``: the safety layer between the policy and MoveIt Servo.

    Every safety check is on by default. Speed, step and acceleration limits bound vector norms in
    the base frame (per-axis speed caps in addition, where set). The limits are ``live``: a change
    at run time is validated and applies from the next command, and at once to the stream in
    flight where it makes that safer (lower caps, shorter watchdog); topics and switches are
    read-only.
    """

    NODE_NAME = "servo_bridge_node"

    ee_delta_topic: str = _param(EE_DELTA.name, "input: magma_ros/EndEffectorDelta from the policy")
    twist_topic: str = _param(SERVO_TWIST.name, "output: Servo's delta_twist_cmds (TwistStamped, speed units)")
    servo_node: str = _param("/servo_node", "Servo node whose ~/pause_servo and ~/switch_command_type are used "
                                            "when they exist; '' = never call Servo services")
    base_frame: str = _param("base_link", "robot base frame: deltas, the EE pose and the twists are in it")
    ee_pose_topic: str = _param(EE_POSE.name, "current EE pose (PoseStamped in base_frame); '' = TF lookup "
                                              "base_frame -> ee_frame (only where tf2_ros is importable)")
    ee_frame: str = _param("", "end-effector frame for the TF lookup when ee_pose_topic is ''")
    stream_rate_hz: float = _param(50.0, "rate the current command is re-stamped and re-sent to Servo")
    zero_messages: int = _param(3, "zero twists sent when a stream stops, before going silent")
    stream_thread_priority: int = _param(10, "SCHED_FIFO priority (1-99) of the thread that streams twists and "
                                             "runs the watchdog, where the OS allows it (root, CAP_SYS_NICE or an "
                                             "rtprio limit; else normal scheduling, said once); 0 = never")
    synchronous_stream: bool = _param(False, "for a synchronous simulator only (sim_arm_node mode synchronous, "
                                             "sync_answer_end first_twist): answer each delta at once with its "
                                             "gripper command and one twist (the step's, unramped; zero if "
                                             "rejected) so the sim steps without waiting a step period of wall "
                                             "time; never on an arm")
    clamp_enabled: bool = _param(True, "clamp each step's |dp| and |dtheta| (vector norms) to max_linear_step_m / "
                                       "max_angular_step_rad")
    max_linear_step_m: float = _param(0.05, "largest |dp| of one step (m, vector norm)", live=True)
    max_angular_step_rad: float = _param(0.25, "largest |dtheta| of one step (rad, vector norm)", live=True)
    max_linear_speed: float = _param(0.4, "linear speed cap (m/s, vector norm; the whole vector is scaled), always "
                                          "applied; at most Servo's scale.linear", live=True)
    max_angular_speed: float = _param(0.8, "angular speed cap (rad/s, vector norm), always applied; at most "
                                           "Servo's scale.rotational", live=True)
    max_linear_axis_speeds: list[float] = _param([0.0, 0.0, 0.0], "extra per-axis linear speed caps x, y, z "  # noqa: RUF009
                                                                  "(m/s); 0 = none on that axis", live=True)
    max_angular_axis_speeds: list[float] = _param([0.0, 0.0, 0.0], "extra per-axis angular speed caps about x, "  # noqa: RUF009
                                                                   "y, z (rad/s); 0 = none on that axis", live=True)
    acceleration_limit_enabled: bool = _param(True, "limit the acceleration of the streamed twist (braking is "
                                                    "never delayed)")
    max_linear_acceleration: float = _param(1.0, "largest linear acceleration of the streamed twist (m/s^2, "
                                                 "vector norm, over elapsed time)", live=True)
    max_angular_acceleration: float = _param(3.0, "largest angular acceleration of the streamed twist (rad/s^2, "
                                                  "vector norm, over elapsed time)", live=True)
    workspace_enabled: bool = _param(True, "check the predicted target (EE pose + step) against the workspace "
                                           "box; a step leaving it is cut to the boundary per axis")
    workspace_min_xyz: list[float] = _param([0.15, -0.6, 0.02], "workspace box lower corner in base_frame (m)",  # noqa: RUF009
                                            live=True)
    workspace_max_xyz: list[float] = _param([0.85, 0.6, 0.9], "workspace box upper corner in base_frame (m)",  # noqa: RUF009
                                            live=True)
    max_pose_age_s: float = _param(0.25, "an EE pose older than this cannot be used for the workspace check",
                                   live=True)
    max_delta_age_s: float = _param(0.5, "deltas whose source stamp is further than this from now are rejected",
                                    live=True)
    min_step_period_s: float = _param(0.02, "deltas with a shorter step_period are rejected "
                                            "(never below one stream tick)", live=True)
    max_step_period_s: float = _param(1.0, "deltas with a longer step_period are rejected", live=True)
    watchdog_enabled: bool = _param(True, "stop streaming when no fresh delta arrived within watchdog_timeout_s")
    watchdog_timeout_s: float = _param(0.2, "longest motion after the last accepted delta (s)", live=True)
    step_overrun_s: float = _param(0.04, "a step's velocity may go on this long past its period (never past the "
                                         "watchdog) so the next step takes over from it instead of from rest; "
                                         "counted in the workspace check; 0 = stop every step at its period; "
                                         "not used with synchronous_stream", live=True)
    watchdog_from_publish_time: bool = _param(True, "count the watchdog from the delta's DDS publication time "
                                                    "(needs synchronized clocks across hosts); false = from receipt")
    estop_topic: str = _param(ESTOP.name, "std_msgs/Bool: true latches an e-stop until ~/reset_estop")
    dry_run: bool = _param(False, "publish diagnostics and ~/filtered_twist but never command Servo or gripper")
    gripper_enabled: bool = _param(True, "command the gripper (JointTrajectory, with hysteresis, on change)")
    gripper_topic: str = _param(GRIPPER_TRAJECTORY.name, "output: trajectory_msgs/JointTrajectory")
    gripper_joint_names: list[str] = _param(["gripper_joint"], "gripper joints the trajectory names")  # noqa: RUF009
    gripper_open_position: float = _param(0.04, "joint position of an open gripper")
    gripper_closed_position: float = _param(0.0, "joint position of a closed gripper")
    gripper_motion_time_s: float = _param(0.5, "time_from_start of the one-point gripper trajectory")
    gripper_open_threshold: float = _param(0.6, "hysteresis: open when the command rises to this")
    gripper_close_threshold: float = _param(0.4, "hysteresis: close when the command falls to this")
    gripper_action: str = _param("", "control_msgs GripperCommand action (used only if importable); '' = none")
    gripper_max_effort: float = _param(0.0, "max_effort of GripperCommand goals; 0 = controller default")
    planning_group: str = _param("arm", "MoveIt planning group for ~/go_home")
    home_configuration: str = _param("home", "named configuration (SRDF group state) ~/go_home moves to")
    diagnostics_period_s: float = _param(1.0, "period of the diagnostics status (s)")
    autostart: bool = _param(False, "configure and activate on start (otherwise wait for lifecycle commands)")

    def __post_init__(self) -> None:
        for name in ("ee_delta_topic", "twist_topic", "base_frame", "estop_topic"):
            _require(bool(getattr(self, name)), f"{name} must not be empty")
        _require_positive(
            stream_rate_hz=self.stream_rate_hz, max_linear_step_m=self.max_linear_step_m,
            max_angular_step_rad=self.max_angular_step_rad, max_linear_speed=self.max_linear_speed,
            max_angular_speed=self.max_angular_speed, max_linear_acceleration=self.max_linear_acceleration,
            max_angular_acceleration=self.max_angular_acceleration, max_pose_age_s=self.max_pose_age_s,
            max_delta_age_s=self.max_delta_age_s, min_step_period_s=self.min_step_period_s,
            max_step_period_s=self.max_step_period_s, watchdog_timeout_s=self.watchdog_timeout_s,
            gripper_motion_time_s=self.gripper_motion_time_s, diagnostics_period_s=self.diagnostics_period_s)
        _require(self.stream_rate_hz <= 1000, f"stream_rate_hz must be <= 1000, got {self.stream_rate_hz}")
        _require(1 <= self.zero_messages <= 100, f"zero_messages must be in 1..100, got {self.zero_messages}")
        _require(isinstance(self.step_overrun_s, (int, float)) and 0 <= self.step_overrun_s <= 1,
                 f"step_overrun_s must be in [0, 1] s, got {self.step_overrun_s}")
        _require(0 <= self.stream_thread_priority <= 99,
                 f"stream_thread_priority must be in 0..99, got {self.stream_thread_priority}")
        _require(self.min_step_period_s < self.max_step_period_s,
                 f"need min_step_period_s < max_step_period_s, got {self.min_step_period_s} / "
                 f"{self.max_step_period_s}")
        for name in ("workspace_min_xyz", "workspace_max_xyz"):
            corner = list(getattr(self, name))
            _require(len(corner) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in corner),
                     f"{name} must be three finite numbers, got {corner}")
        for name in ("max_linear_axis_speeds", "max_angular_axis_speeds"):
            caps = list(getattr(self, name))
            _require(len(caps) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in caps),
                     f"{name} must be three finite numbers >= 0 (0 = no cap), got {caps}")
        lower, upper = list(self.workspace_min_xyz), list(self.workspace_max_xyz)
        _require(all(lo < hi for lo, hi in zip(lower, upper, strict=True)),
                 f"workspace_min_xyz must be below workspace_max_xyz on every axis, got {lower} / {upper}")
        _require(not (self.ee_frame == "" and self.ee_pose_topic == "" and self.workspace_enabled),
                 "the workspace check needs ee_pose_topic or ee_frame (for TF)")
        _require(0 <= self.gripper_close_threshold < self.gripper_open_threshold <= 1,
                 "need 0 <= gripper_close_threshold < gripper_open_threshold <= 1, got "
                 f"{self.gripper_close_threshold} / {self.gripper_open_threshold}")
        _require(not self.gripper_enabled or (bool(self.gripper_joint_names) and all(self.gripper_joint_names)),
                 f"gripper_joint_names must name at least one joint, got {self.gripper_joint_names}")
        for name in ("gripper_open_position", "gripper_closed_position", "gripper_max_effort"):
            _require(math.isfinite(getattr(self, name)), f"{name} must be finite, got {getattr(self, name)}")


PARAMETER_CLASSES[ServoBridgeParameters.NODE_NAME] = ServoBridgeParameters


# ---------------------------------------------------------------------------------
# Simulated workcell (sim_arm_node). Everything else it speaks is a real arm's interface above.
SIM_EPISODE = Topic("/sim/episode", "std_msgs/msg/String", "latched",
                    "episode status as JSON (magma_ros.sim.session.EpisodeStatus): seed, task, step, success, done")
SIM_OBJECTS = Topic("/sim/objects", "visualization_msgs/msg/MarkerArray", "reliable",
                    "ground-truth cube poses (one CUBE marker per cube, ns = colour) for RViz and the scripted expert")
TOPICS.update(SIM_EPISODE=SIM_EPISODE, SIM_OBJECTS=SIM_OBJECTS)

SIM_RESET_SERVICE = "~/reset"   # std_srvs/srv/Trigger (sim_arm_node): new episode from seed/task/color/max_steps
SIM_PAUSE_SERVICE = "~/pause"   # std_srvs/srv/SetBool (sim_arm_node): true holds sim time, false runs it
SERVO_PAUSE_SERVICE = "pause_servo"  # std_srvs/srv/SetBool under the Servo node's name (MoveIt Servo's)



@dataclass
class SimArmParameters(NodeParameters):
    """Parameters of ``sim_arm_node``: the pybullet workcell behind a real arm's ROS interfaces."""

    NODE_NAME = "sim_arm_node"

    mode: str = _param("realtime", "realtime: sim time follows the wall clock | synchronous: one control period "
                                   "per answered observation (deterministic for a seed)")
    seed: int = _param(0, "scene seed of the next episode (cube layout; colour too when color is '')", live=True)
    task: str = _param("reach", "task family of the next episode: reach | pick", live=True)
    color: str = _param("", "target cube colour (red | green | blue); '' = cycle with the seed", live=True)
    max_steps: int = _param(0, "control-step budget of an episode; 0 = the task's default (reach 80, pick 150)",
                            live=True)
    autostart_episode: bool = _param(True, "start an episode (seed, task) at start-up")
    continuous: bool = _param(False, "when an episode ends, start the next one (seed + 1) at once", live=True)
    start_paused: bool = _param(False, "come up with sim time held (~/pause false runs it)")
    control_period_s: float = _param(0.1, "control step (s of sim time): success is tested every step; in "
                                          "synchronous mode each answered observation advances this much")
    state_rate_hz: float = _param(60.0, "joint states, EE pose and /clock per second of sim time "
                                        "(60 = every 4th 240 Hz physics step)")
    camera_rate_hz: float = _param(10.0, "camera frames per second of sim time (realtime; synchronous mode "
                                         "renders once per control step)")
    realtime_factor: float = _param(1.0, "realtime mode: sim seconds per wall second (lower it on slow machines)")
    sync_timeout_s: float = _param(3.0, "synchronous: wall seconds to wait for an answer before stepping with no "
                                        "new command (longer than the slowest policy step)")
    sync_answer_end: str = _param("zero_twist", "synchronous: when an answer is complete. zero_twist: at the zero "
                                                "twist that ends a Servo bridge's stream | first_twist: at the first "
                                                "twist (a teleop sending its gripper command, then one twist per "
                                                "frame) | quiet: sync_quiet_s after the last command")
    sync_quiet_s: float = _param(0.1, "synchronous, sync_answer_end quiet: wall seconds without a command that "
                                      "complete an answer")
    publish_clock: bool = _param(True, "publish /clock (run the other nodes with use_sim_time); false = stamps "
                                       "follow the system clock (realtime mode only)")
    image_width: int = _param(320, "third-person camera width (px)")
    image_height: int = _param(240, "third-person camera height (px)")
    publish_depth: bool = _param(True, "publish aligned depth (32FC1, metres)")
    wrist_camera: bool = _param(False, "also render and publish the wrist camera")
    wrist_inset: bool = _param(False, "paste the wrist camera's view into the top-right corner of the RGB image "
                                      "(the policy's second view; depth there reads NaN). A model trained with "
                                      "it needs it: record, train and evaluate with the same setting")
    render_process: bool = _param(True, "realtime mode: render the cameras in a process of their own, so the sim "
                                        "keeps stepping and taking twists while a frame renders (frames come out "
                                        "one render later, stamped with the sim time they show); false = in the "
                                        "sim's thread. Synchronous mode always renders in its thread")
    render_detail: str = _param("low", "arm meshes the cameras see: low (its collision meshes: about half the "
                                       "render cost) | full (the published visual meshes); record-demos, evaluate "
                                       "and the demo all use this default: a model sees the arm it was trained on")
    image_topic: str = _param(CAMERA_IMAGE.name, "output: RGB camera (sensor_msgs/Image rgb8)")
    camera_info_topic: str = _param(CAMERA_INFO.name, "output: CameraInfo of the RGB camera")
    depth_topic: str = _param(CAMERA_DEPTH.name, "output: depth aligned to the RGB camera (32FC1, m)")
    wrist_image_topic: str = _param(WRIST_IMAGE.name, "output: wrist camera (when wrist_camera)")
    joint_states_topic: str = _param(JOINT_STATES.name, "output: arm and finger joints")
    ee_pose_topic: str = _param(EE_POSE.name, "output: TCP pose (PoseStamped) in the base frame panda_link0")
    objects_topic: str = _param(SIM_OBJECTS.name, "output: ground-truth cube markers")
    episode_topic: str = _param(SIM_EPISODE.name, "output: episode status JSON (latched)")
    instruction_topic: str = _param(INSTRUCTION.name, "output: the episode's instruction (latched)")
    twist_topic: str = _param(SERVO_TWIST.name, "input: Servo's delta_twist_cmds (TwistStamped, speed units)")
    gripper_topic: str = _param(GRIPPER_TRAJECTORY.name, "input: gripper JointTrajectory (finger joint travel, m)")
    servo_node: str = _param("/servo_node", "offer MoveIt Servo's <servo_node>/pause_servo (SetBool); '' = don't")
    diagnostics_period_s: float = _param(1.0, "period of the diagnostics status (wall s)")

    def __post_init__(self) -> None:
        _require(self.mode in ("realtime", "synchronous"), f"mode must be realtime or synchronous, got {self.mode!r}")
        _require(self.task in ("reach", "pick"), f"task must be reach or pick, got {self.task!r}")
        _require(self.color in ("", "red", "green", "blue"), f"color must be '', red, green or blue, got "
                                                             f"{self.color!r}")
        _require(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        _require(0 <= self.max_steps <= 100_000, f"max_steps must be in 0..100000, got {self.max_steps}")
        _require_positive(control_period_s=self.control_period_s, state_rate_hz=self.state_rate_hz,
                          camera_rate_hz=self.camera_rate_hz, realtime_factor=self.realtime_factor,
                          sync_timeout_s=self.sync_timeout_s, sync_quiet_s=self.sync_quiet_s,
                          diagnostics_period_s=self.diagnostics_period_s)
        _require(self.control_period_s <= 1.0, f"control_period_s must be <= 1, got {self.control_period_s}")
        _require(self.state_rate_hz * self.control_period_s >= 1 - 1e-9,
                 f"state_rate_hz {self.state_rate_hz} gives less than one state per control period")
        _require(self.realtime_factor <= 10, f"realtime_factor must be <= 10, got {self.realtime_factor}")
        _require(self.sync_answer_end in ("zero_twist", "first_twist", "quiet"),
                 f"sync_answer_end must be zero_twist, first_twist or quiet, got {self.sync_answer_end!r}")
        _require(self.sync_quiet_s < self.sync_timeout_s,
                 f"need sync_quiet_s < sync_timeout_s, got {self.sync_quiet_s} / {self.sync_timeout_s}")
        _require(self.publish_clock or self.mode == "realtime",
                 "synchronous mode owns time: publish_clock must be true")
        _require(self.render_detail in ("full", "low"), f"render_detail must be full or low, got "
                                                         f"{self.render_detail!r}")
        _require(8 <= self.image_width <= 4096 and 8 <= self.image_height <= 4096,
                 f"image size must be in 8..4096 px, got {self.image_width}x{self.image_height}")
        for name in ("image_topic", "camera_info_topic", "joint_states_topic", "ee_pose_topic", "episode_topic",
                     "instruction_topic", "twist_topic", "gripper_topic"):
            _require(bool(getattr(self, name)), f"{name} must not be empty")


PARAMETER_CLASSES[SimArmParameters.NODE_NAME] = SimArmParameters

SIM_RUNTIME_PARAMETERS = SimArmParameters.live_parameters()
"""sim_arm_node parameters that may change while it runs (read at the next ~/reset): its ``live`` fields."""


PERTURB_STD_MAX = 0.25
"""m/s: the expert's top speed (ExpertConfig.max_speed): its shake stays at or under it, and so does the
speed of its final descent."""


PERTURB_QUIET_HEIGHT_MAX = 0.5
"""m: a quiet zone above the cube's centre taller than the workspace would be no shake at all."""

YAW_SLACK_MAX = math.pi / 4
"""rad: a cube looks the same every quarter turn, so no heading is further than this from square."""

AIM_ERROR_MAX = 0.03
"""m: the largest misjudged cube place (sim.expert.AIM_ERROR_MAX; tests hold them equal)."""

CLOSE_STEPS_MAX = 50
"""The expert's longest still close (control steps): 5 s at 10 Hz."""


@dataclass
class ExpertTeleopParameters(NodeParameters):
    """Parameters of ``expert_teleop`` (the scripted expert as a Servo teleoperator; record-demos runs it)."""

    NODE_NAME = "expert_teleop"

    perturb_std: float = _param(0.0, "a shaky hand (DART): zero-mean Gaussian noise of this standard deviation "
                                     "(m/s, per axis) on the twist while the expert approaches and descends (none in "
                                     "the last perturb_quiet_height above a pick's cube), seeded by the episode's "
                                     "seed; the expert corrects it at the next step, so the recording shows its "
                                     "recovery from off-path states. 0 = none")
    perturb_quiet_height: float = _param(0.04, "m: in a pick, the shake stops once the hand is less than this above "
                                               "the cube's centre (PerturbedExpert.quiet_height). 0.04 keeps the last "
                                               "centimetres exact (recordings of attempts 8-11); lower shakes the "
                                               "final approach too, so the recording shows the expert re-centring "
                                               "over the cube before it closes (it closes only once centred)")
    aim_error: float = _param(0.0, "m: in a pick, the expert misjudges the cube's place across the table by up to "
                                   "this (at least half of it, direction and length seeded by the episode's seed) "
                                   "until it starts to descend, then sees it and re-centres on the way down "
                                   "(MisjudgingExpert): the recording shows a clean correction from a visible "
                                   "offset. 0 = none")
    final_descent_speed: float = _param(0.06, "m/s: the expert's top speed in the last 5 cm of a pick's descent "
                                              "(ExpertConfig.slow_speed), so a recording shows the hand step by step "
                                              "down to where it closes. 0.25 (its top speed anywhere) = recordings "
                                              "before attempt 10 (training/recipes/README.md)")
    yaw_slack: float = _param(0.0, "rad: how far from square with the cube's faces the expert may keep its heading "
                                   "in a pick (ExpertConfig.yaw_slack); it turns only as far as needed to come within "
                                   "it. 0 = square the fingers every time (recordings before attempt 10)")
    close_steps: int = _param(5, "control steps a pick's expert holds still with the gripper closing before it "
                                 "lifts (ExpertConfig.close_steps)")
    # the three defaults above are ExpertConfig's (tests/sim/test_expert_descent.py holds them equal): the
    # contract stays free of the simulator's imports

    def expert_config_fields(self) -> dict[str, Any]:
        """These parameters as ExpertConfig fields (the ROS-free expert's configuration)."""
        return {"slow_speed": self.final_descent_speed, "yaw_slack": self.yaw_slack, "close_steps": self.close_steps}

    def __post_init__(self) -> None:
        _require(math.isfinite(self.perturb_std) and 0.0 <= self.perturb_std <= PERTURB_STD_MAX,
                 f"perturb_std must be in [0, {PERTURB_STD_MAX:g}] m/s, got {self.perturb_std}")
        _require(math.isfinite(self.perturb_quiet_height)
                 and 0.0 <= self.perturb_quiet_height <= PERTURB_QUIET_HEIGHT_MAX,
                 f"perturb_quiet_height must be in [0, {PERTURB_QUIET_HEIGHT_MAX:g}] m, "
                 f"got {self.perturb_quiet_height}")
        _require(math.isfinite(self.aim_error) and 0.0 <= self.aim_error <= AIM_ERROR_MAX,
                 f"aim_error must be in [0, {AIM_ERROR_MAX:g}] m, got {self.aim_error}")
        _require(math.isfinite(self.final_descent_speed) and 0.0 < self.final_descent_speed <= PERTURB_STD_MAX,
                 f"final_descent_speed must be in (0, {PERTURB_STD_MAX:g}] m/s, got {self.final_descent_speed}")
        _require(math.isfinite(self.yaw_slack) and 0.0 <= self.yaw_slack <= YAW_SLACK_MAX,
                 f"yaw_slack must be in [0, {YAW_SLACK_MAX:.4f}] rad, got {self.yaw_slack}")
        _require(1 <= self.close_steps <= CLOSE_STEPS_MAX,
                 f"close_steps must be in [1, {CLOSE_STEPS_MAX}], got {self.close_steps}")


PARAMETER_CLASSES[ExpertTeleopParameters.NODE_NAME] = ExpertTeleopParameters
