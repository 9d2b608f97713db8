"""servo_bridge_node over real DDS: what reaches Servo (and the gripper), and when nothing does."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.subscription import MessageInfo
from std_msgs.msg import Bool, Header
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from magma_ros import contract
from magma_ros.contract import ServoBridgeParameters
from magma_ros.msg import EndEffectorDelta
from magma_ros.ros.runtime import qos
from magma_ros.ros.servo_bridge_node import MOVEIT_UNAVAILABLE, ServoBridgeNode
from tests.ros.harness import RosGraph, change_lifecycle_state, lifecycle_state, wait_for

REPO = Path(__file__).resolve().parents[2]
NAME = ServoBridgeParameters.NODE_NAME
BOX_MIN, BOX_MAX = (0.15, -0.6, 0.02), (0.85, 0.6, 0.9)  # the defaults
POSE = (0.5, 0.0, 0.4)
SERVO_COMMAND_TIMEOUT_NS = 100_000_000  # MoveIt Servo's incoming_command_timeout default (0.1 s)


class Recorder:
    """Messages on a topic with the time DDS received them (ns, system clock: not delayed by our executor)."""

    def __init__(self, node: Node, msg_type: type, topic: str, qos_name: str = "reliable") -> None:
        self.items: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        node.create_subscription(msg_type, topic, self._on_message, qos(qos_name))  # type: ignore[arg-type]

    def _on_message(self, msg: Any, info: MessageInfo) -> None:
        with self._lock:
            self.items.append((info["received_timestamp"], msg))

    def messages(self) -> list[Any]:
        with self._lock:
            return [m for _, m in self.items]

    def __len__(self) -> int:
        return len(self.items)


def is_zero(msg: TwistStamped) -> bool:
    t = msg.twist
    return not any((t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))


def delta_message(node: Node, dx: float = 0.01, *, rot: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  dy: float = 0.0, dz: float = 0.0, gripper: float = 1.0, period: float = 0.2,
                  frame: str = "base_link", age: float = 0.0) -> EndEffectorDelta:
    msg = EndEffectorDelta()
    stamp = node.get_clock().now().nanoseconds - int(age * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = frame
    msg.dx, msg.dy, msg.dz = dx, dy, dz
    msg.droll, msg.dpitch, msg.dyaw = rot
    msg.gripper, msg.step_period = gripper, period
    return msg


class Rig:
    """A bridge plus a probe node that plays policy, robot state and operator."""

    def __init__(self, graph: RosGraph, pose: tuple[float, float, float] | None = POSE, **overrides: Any) -> None:
        # Generous pose age and watchdog: a loaded CI machine may delay this process' executor by
        # a few hundred ms. Staleness: tests/test_safety.py; the watchdog: its own test, with defaults.
        params = {"autostart": True, "max_pose_age_s": 1.0, "watchdog_timeout_s": 1.0, **overrides}
        self.graph = graph
        self.node: ServoBridgeNode = graph.add(ServoBridgeNode(context=graph.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()]))  # type: ignore[assignment]
        self.probe = graph.node("probe")
        self.twists = Recorder(self.probe, TwistStamped, contract.SERVO_TWIST.name)
        self.filtered = Recorder(self.probe, TwistStamped, f"/{NAME}/filtered_twist")
        self.gripper = Recorder(self.probe, JointTrajectory, contract.GRIPPER_TRAJECTORY.name)
        self.deltas = self.probe.create_publisher(EndEffectorDelta, contract.EE_DELTA.name, qos(contract.EE_DELTA))
        self.estop = self.probe.create_publisher(Bool, contract.ESTOP.name, qos(contract.ESTOP))
        if pose is not None:
            self.pose_pub = self.probe.create_publisher(PoseStamped, contract.EE_POSE.name, qos("reliable"))
            self.pose = pose
            self.probe.create_timer(0.02, self._publish_pose)

    def _publish_pose(self) -> None:
        msg = PoseStamped(header=Header(stamp=self.probe.get_clock().now().to_msg(), frame_id="base_link"))
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = self.pose
        self.pose_pub.publish(msg)

    def connected(self) -> bool:
        return (self.deltas.get_subscription_count() > 0 and self.estop.get_subscription_count() > 0
                and self.probe.count_publishers(contract.SERVO_TWIST.name) > 0)

    def wait_ready(self) -> None:
        assert wait_for(self.connected, 10.0)
        if self.node.filter.limits.workspace is not None:
            assert wait_for(lambda: self.node._pose is not None, 5.0)

    def send(self, dx: float = 0.01, **kwargs: Any) -> None:
        self.deltas.publish(delta_message(self.probe, dx, **kwargs))

    def call(self, service: str) -> Trigger.Response:
        client = self.probe.create_client(Trigger, f"/{NAME}/{service}")
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 5.0)
        self.probe.destroy_client(client)
        return future.result()

    def moving(self) -> int:
        return sum(not is_zero(m) for m in self.twists.messages())


def test_inactive_states_command_nothing_and_deactivate_sends_zero(graph: RosGraph) -> None:
    rig = Rig(graph, autostart=False)
    assert lifecycle_state(rig.probe, NAME) == "unconfigured"
    reply = rig.call("go_home")  # offered in every state; without moveit_py it says so
    assert not reply.success and reply.message == MOVEIT_UNAVAILABLE
    assert change_lifecycle_state(rig.probe, NAME, "configure")
    assert lifecycle_state(rig.probe, NAME) == "inactive"
    rig.wait_ready()
    for _ in range(5):
        rig.send(0.02, gripper=0.0)
    assert wait_for(lambda: rig.node.counters["inactive"] == 5, 5.0)
    time.sleep(0.3)
    assert len(rig.twists) == 0 and len(rig.gripper) == 0 and len(rig.filtered) == 0

    assert change_lifecycle_state(rig.probe, NAME, "activate")
    rig.send(0.02, period=1.0, age=0.3)  # inferred from a frame taken before activation: never acted on
    assert wait_for(lambda: rig.node.rejected["stale_delta"] == 1, 2.0)
    rig.send(0.02, period=1.0)
    assert wait_for(lambda: rig.moving() >= 3, 2.0), rig.node.counters
    # Deactivate mid-step: the stream stops at once with zero twists, then nothing more.
    assert change_lifecycle_state(rig.probe, NAME, "deactivate")
    deactivated = time.time_ns()
    assert wait_for(lambda: is_zero(rig.twists.messages()[-1]), 2.0)
    for _ in range(5):
        rig.send(0.02)
    assert wait_for(lambda: rig.node.counters["inactive"] == 10, 5.0)
    time.sleep(0.3)
    twists = rig.twists.messages()
    assert [is_zero(m) for m in twists[-3:]] == [True] * 3 and not is_zero(twists[-4])
    assert all(stamp_ns(m) <= deactivated for m in twists), [(stamp_ns(m) - deactivated, is_zero(m)) for m in twists]


def test_dry_run_publishes_everything_but_commands(graph: RosGraph) -> None:
    rig = Rig(graph, dry_run=True, diagnostics_period_s=0.2)
    diagnostics = Recorder(rig.probe, DiagnosticArray, contract.DIAGNOSTICS.name)
    rig.wait_ready()
    for i in range(10):
        rig.send(0.02 * (-1) ** i, gripper=float(i % 2), period=0.1)
        time.sleep(0.03)
    rig.send(math.nan)
    assert wait_for(lambda: len(rig.filtered) == 10, 5.0), (len(rig.filtered), rig.node.counters, rig.node.rejected)
    assert wait_for(lambda: rig.node.rejected["non_finite"] == 1, 5.0), (rig.node.counters, rig.node.rejected)
    time.sleep(0.4)
    assert len(rig.twists) == 0 and len(rig.gripper) == 0
    assert rig.node.counters["commands"] == 10
    assert wait_for(lambda: any(kv.key == "rejected_non_finite" and kv.value == "1"
                                for d in diagnostics.messages() for kv in d.status[0].values), 3.0)
    status = diagnostics.messages()[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert values["dry_run"] == "True" and values["commands"] == "10" and "dry run" in status.message


# -- generated deltas: every twist that reaches Servo is within the limits ---------------
NEAR_EDGE = (0.83, 0.0, 0.05)  # 2 cm inside x max, 3 cm above z min: many steps get cut
PERIOD = 0.2
SPECIAL = [math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0, 0.3, -0.3, 7.0]
component = st.one_of(st.floats(-0.1, 0.1), st.floats(-0.1, 0.1), st.sampled_from(SPECIAL))


def generated(dtype: Any, shape: Any, elements: st.SearchStrategy) -> st.SearchStrategy:
    return arrays(dtype, shape, elements=elements, fill=st.nothing())  # every element drawn


deltas = st.fixed_dictionaries({
    "values": generated(np.float64, (75, 6), component),
    "period": generated(np.float64, 75, st.sampled_from([PERIOD] * 6 + [0.0, -1.0, math.nan, 5.0])),
    "age": generated(np.float64, 75, st.sampled_from([0.0] * 8 + [2.0])),
    "frame": generated(object, 75, st.sampled_from(["base_link"] * 9 + ["camera"])),
    "burst": generated(bool, 75, st.booleans()),
})
ADVERSARIAL = {"values": np.array([[0.3, -0.3, -0.3, 7.0, -7.0, 0.3]] * 20 + [[-0.3, 0.3, 0.3, -7.0, 7.0, -0.3]] * 20
                                  + [[math.nan] * 6, [math.inf, 0, 0, 0, 0, 0], [1e300, -1e300, 1e300, 0, 0, 0]] * 5
                                  + [[0.1, 0.0, -0.1, 0.0, 0.0, 0.0]] * 20),
               "period": np.array([PERIOD] * 75), "age": np.zeros(75), "frame": np.array(["base_link"] * 75),
               "burst": np.array([True] * 75)}


def stamp_ns(msg: TwistStamped) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def check_twist(msg: TwistStamped, received_ns: int) -> None:
    assert msg.header.frame_id == "base_link"
    assert 0 <= received_ns - stamp_ns(msg) < 0.05e9  # re-stamped when sent: fresh for Servo's 0.1 s timeout
    lin = (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z)
    ang = (msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z)
    assert all(math.isfinite(v) for v in (*lin, *ang))
    assert math.hypot(*lin) <= 0.05 / PERIOD + 1e-9  # |dp| <= max_linear_step_m per step (below 0.4 m/s)
    assert math.hypot(*ang) <= 0.8 + 1e-9  # Servo's rotational scale binds before 0.25 rad/step
    target = [p + v * PERIOD for p, v in zip(NEAR_EDGE, lin, strict=True)]
    assert all(lo - 1e-9 <= t <= hi + 1e-9 for lo, t, hi in zip(BOX_MIN, target, BOX_MAX, strict=True)), target


def test_generated_deltas_over_dds_never_command_beyond_the_limits(graph: RosGraph) -> None:
    rig = Rig(graph, pose=NEAR_EDGE)
    rig.wait_ready()
    sent = {"deltas": 0}

    @settings(max_examples=3, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @example(ADVERSARIAL)
    @given(deltas)
    def run(g: dict) -> None:
        for i in range(75):
            dx, dy, dz, *rot = (float(v) for v in g["values"][i])
            rig.send(dx, dy=dy, dz=dz, rot=tuple(rot), period=float(g["period"][i]), age=float(g["age"][i]),
                     frame=str(g["frame"][i]))
            sent["deltas"] += 1
            time.sleep(0.003 if g["burst"][i] else 0.015)

    run()
    assert sent["deltas"] >= 300
    # Bursts may overflow the keep-last-10 queue (the newest deltas win); wait until all that came is handled.
    counts = [-1]
    assert wait_for(lambda: counts.append(rig.node.counters["received"]) or counts[-1] == counts[-2], 10.0, 0.3)
    print(f"{rig.node.counters['received']} of {sent['deltas']} deltas received")
    # Under load, bursts overflow the queue: enough must arrive to exercise the filter, not all.
    assert rig.node.counters["received"] > 0.4 * sent["deltas"]
    time.sleep(0.4)
    for received_ns, msg in rig.twists.items:
        check_twist(msg, received_ns)
    stamps = [stamp_ns(m) for m in rig.twists.messages()]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    rejected = rig.node.rejected
    # Enough accepted commands to exercise streaming (how many depends on what the queue kept).
    assert rig.moving() > 20 and rig.node.counters["commands"] > 20, (rig.moving(), rig.node.counters)
    assert rejected["non_finite"] > 0 and rejected["bad_step_period"] > 0 and rejected["frame_mismatch"] > 0
    assert rig.node.counters["clamped"] > 0 and rig.node.counters["workspace_cut"] > 0
    assert is_zero(rig.twists.messages()[-1])  # the stream ended with a stop


# -- watchdog ---------------------------------------------------------------------------
def test_watchdog_stops_the_stream_within_200_ms_of_the_last_delta(graph: RosGraph, spawn) -> None:
    # The bridge in its own process, as on a robot, with the default watchdog (0.2 s, counted from
    # the delta's publication). Steps of 1 s, so only the watchdog can end them: the last non-zero
    # twist leaves at most timeout - 1 tick (0.18 s) after the last delta was published.
    # Latency = DDS receive time of the last non-zero twist Servo would act on (stamp younger
    # than its 0.1 s incoming_command_timeout on arrival) - time the last delta was published.
    proc = spawn("servo_bridge_node", "--ros-args", "-p", "autostart:=true", "-p", "workspace_enabled:=false")
    probe = graph.node("probe")
    twists = Recorder(probe, TwistStamped, contract.SERVO_TWIST.name)
    deltas = probe.create_publisher(EndEffectorDelta, contract.EE_DELTA.name, qos(contract.EE_DELTA))
    assert wait_for(lambda: deltas.get_subscription_count() > 0, 30.0), proc.output()
    assert lifecycle_state(probe, NAME) == "active"  # deltas from before activation are never acted on

    def zeros_after(t0: int) -> int:
        return sum(is_zero(m) for t, m in twists.items if t >= t0)

    # Warm-up: one full stream, so DDS discovery has settled on both sides of the twist topic.
    deltas.publish(delta_message(probe, 0.01, period=0.1))
    assert wait_for(lambda: zeros_after(0) >= 3, 10.0), proc.output()
    time.sleep(0.1)
    latencies, sent, arrived = [], [], []
    for _ in range(20):
        start = time.time_ns()
        deltas.publish(delta_message(probe, 0.01, period=1.0))
        time.sleep(0.05)
        last_sent = time.time_ns()
        deltas.publish(delta_message(probe, 0.01, period=1.0))
        assert wait_for(lambda t0=last_sent: zeros_after(t0) >= 3, 2.0), proc.output()
        time.sleep(0.06)  # anything sent after the zeros would arrive here
        trial = [(t, m) for t, m in twists.items if t >= start]
        moving = [(t, stamp_ns(m)) for t, m in trial if not is_zero(m)]
        assert moving and [is_zero(m) for _, m in trial[-3:]] == [True] * 3 and all(t < trial[-3][0] for t, _ in moving)
        acted_on = [t for t, stamp in moving if t - stamp < SERVO_COMMAND_TIMEOUT_NS]
        latencies.append((max(acted_on, default=last_sent) - last_sent) * 1e-9)
        sent.append((max(stamp for _, stamp in moving) - last_sent) * 1e-9)  # when the bridge sent it
        arrived.append((max(t for t, _ in moving) - last_sent) * 1e-9)  # including any Servo would drop as stale
    print(f"watchdog stop latency over 20 trials: max {max(latencies) * 1e3:.1f} ms, median "
          f"{sorted(latencies)[10] * 1e3:.1f} ms (last non-zero twist sent: max {max(sent) * 1e3:.1f} ms; "
          f"arrived, stale or not: max {max(arrived) * 1e3:.1f} ms)")
    assert max(latencies) <= 0.2 and max(sent) <= 0.2, (latencies, sent)
    assert min(sent) > 0.1, sent  # the stream ran on after the last delta, until the watchdog


# -- e-stop -----------------------------------------------------------------------------
def test_estop_latches_until_reset(graph: RosGraph) -> None:
    rig = Rig(graph)
    pauses: list[bool] = []  # a stand-in for Servo's ~/pause_servo

    def pause_servo(request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        pauses.append(request.data)
        response.success = True
        return response

    rig.probe.create_service(SetBool, "/servo_node/pause_servo", pause_servo)
    rig.wait_ready()
    assert wait_for(lambda: rig.node._pause_client.service_is_ready(), 5.0)
    rig.send(0.02, period=1.0)
    assert wait_for(lambda: rig.moving() >= 2, 2.0), rig.node.counters
    rig.estop.publish(Bool(data=True))
    assert wait_for(lambda: rig.node.estop.engaged, 2.0)
    assert wait_for(lambda: is_zero(rig.twists.messages()[-1]), 2.0)
    time.sleep(0.1)
    moving = rig.moving()
    for _ in range(3):
        rig.send(0.02)
    assert wait_for(lambda: rig.node.rejected["estop"] == 3, 2.0)
    assert not rig.call("reset_estop").success  # input still asserted
    rig.estop.publish(Bool(data=False))
    assert wait_for(lambda: not rig.node.estop.asserted, 2.0)
    rig.send(0.02)  # released but still latched
    assert wait_for(lambda: rig.node.rejected["estop"] == 4, 2.0)
    time.sleep(0.2)
    assert rig.moving() == moving
    reply = rig.call("reset_estop")
    assert reply.success, reply.message
    rig.send(0.02)
    assert wait_for(lambda: rig.moving() > moving, 2.0)
    assert wait_for(lambda: pauses == [True, False], 2.0), pauses  # Servo paused on e-stop, resumed on reset


def test_stream_stops_when_the_arm_leaves_the_box(graph: RosGraph) -> None:
    rig = Rig(graph, pose=(0.8, 0.0, 0.4))
    rig.wait_ready()
    rig.send(0.04, period=1.0)  # +x, cut so the target lands on x = 0.85
    assert wait_for(lambda: rig.moving() >= 3, 2.0), rig.node.counters
    rig.pose = (0.86, 0.0, 0.4)  # overshoot (tracking error) while still commanding +x
    assert wait_for(lambda: rig.node.counters["workspace_breach_stops"] == 1, 2.0)
    assert wait_for(lambda: is_zero(rig.twists.messages()[-1]), 1.0)
    time.sleep(0.2)
    assert [is_zero(m) for m in rig.twists.messages()[-3:]] == [True] * 3 and not rig.node.stream.active


# -- gripper ----------------------------------------------------------------------------
def test_gripper_commands_follow_hysteresis_and_change_only(graph: RosGraph) -> None:
    rig = Rig(graph, gripper_joint_names=["finger_left", "finger_right"])
    rig.wait_ready()
    for g in [0.5, 1.0, 0.9, 0.5, 0.45, 0.3, 0.1, 0.35, 0.55, 0.7, 0.8]:
        rig.send(0.0, gripper=g)
        time.sleep(0.02)
    assert wait_for(lambda: rig.node.counters["received"] == 11, 5.0)
    assert wait_for(lambda: len(rig.gripper) == 3, 2.0)
    time.sleep(0.2)
    trajectories = rig.gripper.messages()
    assert [list(t.points[0].positions) for t in trajectories] == [[0.04, 0.04], [0.0, 0.0], [0.04, 0.04]]
    assert all(t.joint_names == ["finger_left", "finger_right"] for t in trajectories)
    assert len(rig.twists) == 0  # zero steps command no motion (and there was no stream to stop)


# -- the executable with the shipped parameter file -----------------------------------------
def test_executable_runs_with_the_parameter_file_and_refuses_bad_values(graph: RosGraph, spawn) -> None:
    params = str(REPO / "config" / "servo_bridge.yaml")
    bad = spawn("servo_bridge_node", "--ros-args", "--params-file", params, "-p", "max_linear_step_m:=-1.0")
    proc = spawn("servo_bridge_node", "--ros-args", "--params-file", params, "-p", "autostart:=true",
                 "-p", "diagnostics_period_s:=0.2")
    probe = graph.node("probe")
    diagnostics = Recorder(probe, DiagnosticArray, contract.DIAGNOSTICS.name)
    twists = Recorder(probe, TwistStamped, contract.SERVO_TWIST.name)
    assert wait_for(lambda: len(diagnostics) > 0, 30.0), proc.output()
    assert lifecycle_state(probe, NAME) == "active"
    status = diagnostics.messages()[-1].status[0]
    assert status.name == f"{NAME}: servo bridge" and status.message == "active"
    assert {"watchdog_trips", "rejected_non_finite", "clamped", "estop_engaged"} <= {kv.key for kv in status.values}
    publisher = probe.create_publisher(EndEffectorDelta, contract.EE_DELTA.name, qos(contract.EE_DELTA))
    assert wait_for(lambda: publisher.get_subscription_count() > 0, 10.0)
    publisher.publish(EndEffectorDelta(step_period=0.2))  # frame_id '' is not base_link: refused
    assert wait_for(lambda: any(kv.key == "rejected_frame_mismatch" and kv.value == "1"
                                for d in diagnostics.messages() for kv in d.status[0].values), 5.0)
    assert len(twists) == 0
    assert wait_for(lambda: not bad.alive(), 20.0)
    assert "max_linear_step_m" in bad.output()
    assert bad.stop() == 1
    assert proc.alive()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_the_process_mid_stream_ends_with_zero_twists(graph: RosGraph, spawn, sig: int) -> None:
    # Ctrl-C (or a supervisor's SIGTERM) while the arm moves: the node's close() still runs
    # before the context shuts down, so Servo gets explicit zeros, not just a silent stream.
    proc = spawn("servo_bridge_node", "--ros-args", "-p", "autostart:=true", "-p", "workspace_enabled:=false")
    probe = graph.node("probe")
    twists = Recorder(probe, TwistStamped, contract.SERVO_TWIST.name)
    deltas = probe.create_publisher(EndEffectorDelta, contract.EE_DELTA.name, qos(contract.EE_DELTA))
    assert wait_for(lambda: deltas.get_subscription_count() > 0, 30.0), proc.output()
    assert lifecycle_state(probe, NAME) == "active"
    deltas.publish(delta_message(probe, 0.01, period=1.0))
    assert wait_for(lambda: any(not is_zero(m) for m in twists.messages()), 5.0), proc.output()
    os.killpg(proc.proc.pid, sig)
    assert proc.proc.wait(10) == 0, proc.output()
    time.sleep(0.2)
    received = twists.messages()
    assert received and is_zero(received[-1]), [is_zero(m) for m in received[-5:]]
