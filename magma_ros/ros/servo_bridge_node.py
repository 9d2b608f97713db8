"""servo_bridge_node: the safety layer between the policy's end-effector steps and MoveIt Servo.

A lifecycle node: it comes up unconfigured (or configures and activates itself with
``autostart``) and commands nothing unless active. Each accepted EndEffectorDelta becomes a
TwistStamped in speed units (delta / step_period), re-stamped and re-sent to Servo at
``stream_rate_hz`` for one step period, then a few zero twists, then silence (Servo halts when
its input stops). The checks live in :mod:`magma_ros.safety`; this file only moves messages.

* A rejected delta, an e-stop, the watchdog or deactivation stop the stream at once (zeros).
  Deltas inferred from frames taken before the last activation are never acted on.
* The e-stop (std_msgs/Bool, true = stop) latches in every lifecycle state until
  ``~/reset_estop`` is called with the input released.
* ``dry_run``: diagnostics and ``~/filtered_twist`` are published, Servo and gripper are not.
* MoveIt extras are used only where importable: Servo's ``~/switch_command_type``
  (moveit_msgs), the GripperCommand action (control_msgs), TF for the EE pose (tf2_ros),
  ``~/go_home`` (moveit_py).
* Timing (stream, watchdog) runs on the steady clock; stamps and ages use the node clock. The
  watchdog counts from the delta's DDS publication time where rclpy provides it (Iron+), so
  transport or executor delays cannot extend motion past ``watchdog_timeout_s``.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.subscription import Subscription
from rclpy.time import Time
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from magma_ros import contract
from magma_ros.codecs import GripperHysteresis
from magma_ros.contract import ContractError, ServoBridgeParameters
from magma_ros.ros.runtime import declare_parameters, message_type, qos, run_node
from magma_ros.safety import (
    ZERO,
    Adjustment,
    CommandStream,
    Delta,
    EStopAssertedError,
    EStopLatch,
    Pose,
    Rejection,
    RejectReason,
    SafetyConfigError,
    SafetyFilter,
    SafetyLimits,
    StreamEnd,
    Velocity,
    Watchdog,
    WorkspaceBox,
)

WARN_PERIOD_S = 2.0
MOVEIT_UNAVAILABLE = "MoveIt (moveit_py) is not available"


def _optional(module: str) -> Any:
    """The module, or None where it is not installed (MoveIt and friends are optional)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def safety_limits(p: ServoBridgeParameters) -> SafetyLimits:
    """The core's limits from the node parameters (a step never shorter than one stream tick)."""
    box = WorkspaceBox(tuple(p.workspace_min_xyz), tuple(p.workspace_max_xyz))  # type: ignore[arg-type]
    return SafetyLimits(
        max_linear_step=p.max_linear_step_m, max_angular_step=p.max_angular_step_rad,
        max_linear_speed=p.max_linear_speed, max_angular_speed=p.max_angular_speed, clamp_enabled=p.clamp_enabled,
        max_linear_speed_change=p.max_linear_speed_change, max_angular_speed_change=p.max_angular_speed_change,
        rate_limit_enabled=p.rate_limit_enabled, workspace=box if p.workspace_enabled else None,
        max_pose_age_s=p.max_pose_age_s, max_delta_age_s=p.max_delta_age_s,
        min_step_period_s=max(p.min_step_period_s, 1.0 / p.stream_rate_hz), max_step_period_s=p.max_step_period_s)


class ServoBridgeNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(ServoBridgeParameters.NODE_NAME, **kwargs)
        self.params = p = declare_parameters(self, ServoBridgeParameters)
        try:
            self.filter = SafetyFilter(safety_limits(p))
        except SafetyConfigError as err:
            self.get_logger().error(f"invalid parameters: {err}")
            raise ContractError(str(err)) from err
        self._lock = threading.RLock()
        self._active = False
        self._homing = False
        self.watchdog = Watchdog(p.watchdog_timeout_s) if p.watchdog_enabled else None
        self.stream = CommandStream(1.0 / p.stream_rate_hz, p.zero_messages, self.watchdog)
        self.estop = EStopLatch()
        self.gripper = GripperHysteresis(p.gripper_open_threshold, p.gripper_close_threshold)
        self._gripper_sent: float | None = None
        self._activated_at: Time | None = None
        self._pose: PoseStamped | None = None
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._moveit: Any = None
        self._pause_client: Any = None
        self._servo_command_client: Any = None
        self._gripper_action: Any = None
        self._gripper_goal_type: Any = None
        self.counters = dict.fromkeys(("received", "inactive", "ignored_homing", "commands", "twists_sent",
                                       "zero_twists_sent", "gripper_commands", "pose_frame_mismatch",
                                       "workspace_breach_stops", *(a.value for a in Adjustment)), 0)
        self.rejected = {r.value: 0 for r in RejectReason}
        self._own_subscriptions: list[Any] = []
        self._own_timers: list[Any] = []
        self._own_publishers: list[Any] = []
        self._own_clients: list[Any] = []
        # Always on, in every lifecycle state: the e-stop latch and its reset, and go_home's answer.
        self._estop_sub = self.create_subscription(Bool, p.estop_topic, self._on_estop, qos(contract.ESTOP))
        self._reset_srv = self.create_service(Trigger, contract.RESET_ESTOP_SERVICE, self._on_reset_estop)
        self._home_srv = self.create_service(Trigger, contract.GO_HOME_SERVICE, self._on_go_home,
                                             callback_group=MutuallyExclusiveCallbackGroup())
        if p.autostart:
            self.trigger_configure()
            if self._own_publishers:
                self.trigger_activate()

    # -- lifecycle -------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        if not p.ee_pose_topic and p.workspace_enabled:
            tf2_ros = _optional("tf2_ros")
            if tf2_ros is None:
                self.get_logger().error("the workspace check needs ee_pose_topic: tf2_ros is not available")
                return TransitionCallbackReturn.FAILURE
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        self._twist_pub = self.create_lifecycle_publisher(TwistStamped, p.twist_topic, qos(contract.SERVO_TWIST))
        self._filtered_pub = self.create_lifecycle_publisher(TwistStamped, contract.FILTERED_TWIST_TOPIC,
                                                             qos("reliable"))
        self._gripper_pub = self.create_lifecycle_publisher(
            JointTrajectory, p.gripper_topic, qos(contract.GRIPPER_TRAJECTORY))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS.name,
                                                      qos(contract.DIAGNOSTICS))
        self._own_publishers = [self._twist_pub, self._filtered_pub, self._gripper_pub, self._diagnostics_pub]
        with_info = p.watchdog_from_publish_time and hasattr(Subscription, "CallbackType")  # Iron+: MessageInfo
        on_delta = self._on_delta_with_info if with_info else self._on_delta
        self._own_subscriptions.append(self.create_subscription(
            message_type(contract.EE_DELTA), p.ee_delta_topic, on_delta, qos(contract.EE_DELTA)))
        if p.ee_pose_topic:  # best effort matches both reliable and best-effort pose publishers
            self._own_subscriptions.append(self.create_subscription(
                PoseStamped, p.ee_pose_topic, self._on_pose, qos("sensor_data")))
        if p.servo_node:
            self._pause_client = self.create_client(SetBool, f"{p.servo_node}/{contract.SERVO_PAUSE_SERVICE}")
            self._own_clients.append(self._pause_client)
            moveit_srv = _optional("moveit_msgs.srv")
            if moveit_srv is not None:
                self._servo_command_client = self.create_client(
                    moveit_srv.ServoCommandType, f"{p.servo_node}/switch_command_type")
                self._own_clients.append(self._servo_command_client)
        control_action = _optional("control_msgs.action") if p.gripper_action and p.gripper_enabled else None
        if control_action is not None:
            from rclpy.action import ActionClient

            self._gripper_action = ActionClient(self, control_action.GripperCommand, p.gripper_action)
            self._gripper_goal_type = control_action.GripperCommand.Goal
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._own_timers.append(self.create_timer(1.0 / p.stream_rate_hz, self._on_tick, clock=steady))
        self._own_timers.append(self.create_timer(p.diagnostics_period_s, self._publish_diagnostics))
        self.get_logger().info(f"configured: {p.ee_delta_topic} -> {p.twist_topic}"
                               f"{' (dry run)' if p.dry_run else ''}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self.stream.silence()
            if self.watchdog is not None:
                self.watchdog.reset()
            self._gripper_sent = None
            self._activated_at = self.get_clock().now()
            self._active = True
        if not self.estop.engaged:
            self._prepare_servo()
        self.get_logger().info("active: streaming accepted steps to Servo"
                               if not self.params.dry_run else "active (dry run): Servo is never commanded")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self._halt()
            self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        with self._lock:
            self._active = False
            self.stream.silence()
        for timer in self._own_timers:
            self.destroy_timer(timer)
        for sub in self._own_subscriptions:
            self.destroy_subscription(sub)
        for client in self._own_clients:
            self.destroy_client(client)
        for pub in self._own_publishers:
            self.destroy_lifecycle_publisher(pub) if hasattr(pub, "on_activate") else self.destroy_publisher(pub)
        if self._gripper_action is not None:
            self._gripper_action.destroy()
            self._gripper_action = None
        if self._tf_listener is not None:
            self._tf_listener.unregister()
            self._tf_listener = None
        self._own_timers, self._own_subscriptions, self._own_clients, self._own_publishers = [], [], [], []
        self._pause_client = self._servo_command_client = self._tf_buffer = self._pose = None

    def close(self) -> None:
        """Stop the arm (zeros, if anything was streaming) and release everything."""
        try:
            with self._lock:
                if self._active:
                    self._halt()
        except Exception as err:  # the context may already be shut down (Ctrl-C); Servo halts on silence
            self.get_logger().warning(f"could not send the final zero twist: {err!r}")
        self._release()

    # -- inputs ----------------------------------------------------------------------
    def _on_delta_with_info(self, msg: Any, info: Any) -> None:
        """The watchdog counts from the delta's publication, so queueing here cannot extend motion."""
        source_ns = info.get("source_timestamp") or 0
        age = (time.time_ns() - source_ns) * 1e-9 if source_ns > 0 else 0.0
        if age > self.params.watchdog_timeout_s:
            self.get_logger().warning(f"delta published {age:.3f} s ago, more than the watchdog timeout: not "
                                      "streamed (slow transport or unsynchronized clocks?)",
                                      throttle_duration_sec=WARN_PERIOD_S)
        self._on_delta(msg, age)

    def _on_delta(self, msg: Any, publish_age_s: float = 0.0) -> None:
        self.counters["received"] += 1
        if not self._active or self._homing:
            self.counters["inactive" if not self._active else "ignored_homing"] += 1
            return
        p = self.params
        with self._lock:
            if self.estop.engaged:
                self._reject(Rejection(RejectReason.ESTOP, "e-stop engaged: call ~/reset_estop"))
                return
            if msg.header.frame_id != p.base_frame:
                self._reject(Rejection(RejectReason.FRAME_MISMATCH, f"delta in frame {msg.header.frame_id!r}, "
                                                                    f"expected {p.base_frame!r}"))
                return
            now = self.get_clock().now()
            stamp = Time.from_msg(msg.header.stamp, clock_type=now.clock_type)
            if self._activated_at is not None and stamp < self._activated_at <= now:
                self._reject(Rejection(RejectReason.STALE_DELTA, "inferred from a frame taken before activation"))
                return
            delta = Delta((msg.dx, msg.dy, msg.dz), (msg.droll, msg.dpitch, msg.dyaw), msg.gripper,
                          msg.step_period, (now - stamp).nanoseconds * 1e-9)
            result = self.filter.check(delta, self._current_pose(now), self.stream.velocity)
            if isinstance(result, Rejection):
                self._reject(result)
                return
            self.counters["commands"] += 1
            for adjustment in result.adjustments:
                self.counters[adjustment.value] += 1
            self.stream.start(result, publish_age_s)
            self._send_tick()
            self._filtered_pub.publish(self._twist(result.velocity, msg.header.stamp))
            self._update_gripper(msg.gripper)

    def _on_pose(self, msg: PoseStamped) -> None:
        if msg.header.frame_id != self.params.base_frame:
            self.counters["pose_frame_mismatch"] += 1
            self.get_logger().warning(f"EE pose in frame {msg.header.frame_id!r} ignored (expected "
                                      f"{self.params.base_frame!r})", throttle_duration_sec=WARN_PERIOD_S)
            return
        self._pose = msg

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if not self.estop.update(msg.data):
                return
            self.get_logger().error("E-STOP engaged: streaming stopped until ~/reset_estop")
            if self._active:
                self.stream.stop(StreamEnd.STOPPED)
                self._send_tick()
        self._call_pause(True)

    def _on_reset_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            try:
                self.estop.reset()
            except EStopAssertedError as err:
                response.success, response.message = False, str(err)
                return response
            self._gripper_sent = None
        self.get_logger().info("e-stop reset")
        if self._active:
            self._prepare_servo()
        response.success, response.message = True, "e-stop reset"
        return response

    # -- output ----------------------------------------------------------------------
    def _on_tick(self) -> None:
        with self._lock:
            if not self._active:
                return
            velocity = self.stream.velocity
            box = self.filter.limits.workspace
            if box is not None and not velocity.is_zero():
                pose = self._current_pose(self.get_clock().now())
                if pose is not None and box.heading_out(pose.position, velocity.linear):
                    self.counters["workspace_breach_stops"] += 1
                    self.get_logger().warning(f"EE at {pose.position} is outside the workspace: stream stopped",
                                              throttle_duration_sec=WARN_PERIOD_S)
                    self.stream.stop(StreamEnd.STOPPED)
            self._send_tick()

    def _send_tick(self) -> None:
        velocity = self.stream.next_message()
        if velocity is None:
            return
        self._publish_twist(velocity)

    def _publish_twist(self, velocity: Velocity) -> None:
        if self.params.dry_run:
            return
        self._twist_pub.publish(self._twist(velocity, self.get_clock().now().to_msg()))
        self.counters["zero_twists_sent" if velocity.is_zero() else "twists_sent"] += 1

    def _halt(self) -> None:
        """Stop now: if anything was streaming, send all the zero twists at once."""
        if self.stream.active:
            self.stream.stop(StreamEnd.STOPPED)
            for _ in range(self.params.zero_messages):
                self._publish_twist(ZERO)
        self.stream.silence()

    def _twist(self, velocity: Velocity, stamp: Any) -> TwistStamped:
        msg = TwistStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = self.params.base_frame
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in velocity.linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in velocity.angular)
        return msg

    def _reject(self, rejection: Rejection) -> None:
        self.rejected[rejection.reason.value] += 1
        self.get_logger().warning(f"delta rejected ({rejection.reason.value}): {rejection.detail}",
                                  throttle_duration_sec=WARN_PERIOD_S)
        self.stream.stop(StreamEnd.STOPPED)
        self._send_tick()

    def _update_gripper(self, opening: float) -> None:
        p = self.params
        if not p.gripper_enabled:
            return
        undecided = p.gripper_close_threshold < opening < p.gripper_open_threshold
        if self._gripper_sent is None and undecided:
            return  # after activation or a reset, wait for a clear open/close before commanding
        state = self.gripper.update(opening)
        if state == self._gripper_sent:
            return
        self._gripper_sent = state
        if p.dry_run:
            return
        position = p.gripper_open_position if state > 0.5 else p.gripper_closed_position
        msg = JointTrajectory()
        msg.joint_names = list(p.gripper_joint_names)
        point = JointTrajectoryPoint()
        point.positions = [float(position)] * len(msg.joint_names)
        point.time_from_start = Duration(seconds=p.gripper_motion_time_s).to_msg()
        msg.points = [point]
        self._gripper_pub.publish(msg)
        self.counters["gripper_commands"] += 1
        if self._gripper_action is not None and self._gripper_action.server_is_ready():
            goal = self._gripper_goal_type()
            goal.command.position = float(position)
            goal.command.max_effort = float(p.gripper_max_effort)
            self._gripper_action.send_goal_async(goal)

    # -- MoveIt Servo services (only where they exist) -------------------------------
    def _prepare_servo(self) -> None:
        """Switch Servo to twist commands and unpause it, where those services exist."""
        if self.params.dry_run:
            return
        client = self._servo_command_client
        if client is not None and client.service_is_ready():
            request = client.srv_type.Request()
            request.command_type = getattr(request, "TWIST", 1)
            client.call_async(request)
        self._call_pause(False)

    def _call_pause(self, pause: bool) -> None:
        client = self._pause_client
        if self.params.dry_run or client is None or not client.service_is_ready():
            return
        client.call_async(SetBool.Request(data=pause))

    # -- go home (MoveItPy only) -----------------------------------------------------
    def _on_go_home(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        success, message = self._go_home()
        response.success, response.message = success, message
        return response

    def _go_home(self) -> tuple[bool, str]:
        planning = _optional("moveit.planning")
        if planning is None:
            return False, MOVEIT_UNAVAILABLE
        p = self.params
        if self.estop.engaged:
            return False, "e-stop engaged: call ~/reset_estop first"
        if p.dry_run:
            return False, "dry_run: the arm is never commanded"
        if not self._active:
            return False, "the bridge is not active"
        with self._lock:
            self._homing = True
            self._halt()
        try:
            if self._moveit is None:
                self._moveit = planning.MoveItPy(node_name=f"{self.get_name()}_moveit")
            component = self._moveit.get_planning_component(p.planning_group)
            component.set_start_state_to_current_state()
            component.set_goal_state(configuration_name=p.home_configuration)
            plan = component.plan()
            if not plan:
                return False, f"no plan to {p.home_configuration!r} for group {p.planning_group!r}"
            self._moveit.execute(plan.trajectory, controllers=[])
            return True, f"moved to {p.home_configuration!r}"
        except Exception as err:  # MoveIt reports failures as exceptions of its own types
            return False, f"go_home failed: {err}"
        finally:
            self._homing = False

    # -- helpers ---------------------------------------------------------------------
    def _age_s(self, stamp: Any, now: Time) -> float:
        return (now - Time.from_msg(stamp, clock_type=now.clock_type)).nanoseconds * 1e-9

    def _current_pose(self, now: Time) -> Pose | None:
        if self._tf_buffer is not None:
            try:
                transform = self._tf_buffer.lookup_transform(self.params.base_frame, self.params.ee_frame, Time())
            except Exception:  # tf2 lookup/extrapolation/connectivity errors: no pose known
                return None
            t = transform.transform.translation
            return Pose((t.x, t.y, t.z), self._age_s(transform.header.stamp, now))
        msg = self._pose
        if msg is None:
            return None
        q = msg.pose.position
        return Pose((q.x, q.y, q.z), self._age_s(msg.header.stamp, now))

    def _publish_diagnostics(self) -> None:
        p = self.params
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: servo bridge"
        status.hardware_id = p.twist_topic
        if self.estop.engaged:
            status.level, status.message = DiagnosticStatus.ERROR, "e-stop engaged"
        elif not self._active:
            status.level, status.message = DiagnosticStatus.WARN, "inactive"
        else:
            status.level = DiagnosticStatus.WARN if p.dry_run else DiagnosticStatus.OK
            status.message = "active" + (" (dry run)" if p.dry_run else "")
        values = {**self.counters,
                  **{f"rejected_{reason}": count for reason, count in self.rejected.items()},
                  "rejected": sum(self.rejected.values()),
                  "watchdog_trips": self.stream.ends[StreamEnd.WATCHDOG],
                  "estop_engaged": self.estop.engaged, "estop_asserted": self.estop.asserted,
                  "estop_trips": self.estop.trips, "streaming": not self.stream.velocity.is_zero(),
                  "dry_run": p.dry_run}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_pub.publish(array)


NODE = ServoBridgeNode


def main(args: list[str] | None = None) -> int:
    return run_node(ServoBridgeNode, args)
