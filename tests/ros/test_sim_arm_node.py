"""sim_arm_node over real DDS: a real arm's interfaces, both time modes, Servo semantics, the expert over ROS."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from magma_ros import contract
from magma_ros.image_codec import depth_to_meters, message_to_rgb8
from magma_ros.ros.expert_teleop_node import ExpertTeleopNode
from magma_ros.ros.runtime import qos
from magma_ros.ros.sim_arm_node import SimArmNode, stamp_of
from magma_ros.ros.sim_episodes import EpisodeClientError, SimEpisodeClient, call
from magma_ros.sim import THIRD_PERSON_CAMERA, CameraIntrinsics, ScriptedExpert, Workcell, run_episode
from magma_ros.sim.config import PANDA_ARM_JOINTS, PANDA_FINGER_JOINTS
from magma_ros.sim.session import CLOCK_START_S, EpisodeStatus, choose_task
from tests.ros.harness import RosGraph, wait_for, wait_until_quiet

BASE = "panda_link0"


def seconds(msg: Any) -> float:
    stamp = msg.clock if isinstance(msg, Clock) else msg.header.stamp
    return stamp.sec + stamp.nanosec * 1e-9


class Collector:
    """Every message of a topic, through a deep queue."""

    def __init__(self, node: Node, msg_type: type, topic: contract.Topic) -> None:
        self.items: list[Any] = []
        self._lock = threading.Lock()
        base = qos(topic)
        profile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=base.reliability,
                             durability=base.durability)
        node.create_subscription(msg_type, topic.name, self._on_message, profile)

    def _on_message(self, msg: Any) -> None:
        with self._lock:
            self.items.append(msg)

    def __call__(self) -> list[Any]:
        with self._lock:
            return list(self.items)


class Rig:
    """A sim_arm_node (synchronous, held, no episode yet by default) and a probe playing teleop and observer.

    The probe answers like a teleop, one twist per frame, so answers end by ``quiet``.
    """

    def __init__(self, graph: RosGraph, **overrides: Any) -> None:
        params = {"mode": "synchronous", "start_paused": True, "autostart_episode": False,
                  "sync_answer_end": "quiet", "sync_quiet_s": 0.02, "sync_timeout_s": 1.0, **overrides}
        self.sim: SimArmNode = graph.add(SimArmNode(context=graph.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()]))  # type: ignore[assignment]
        self.probe = graph.node("probe")
        self.client = SimEpisodeClient(self.probe)
        self.images = Collector(self.probe, Image, contract.CAMERA_IMAGE)
        self.depth = Collector(self.probe, Image, contract.CAMERA_DEPTH)
        self.info = Collector(self.probe, CameraInfo, contract.CAMERA_INFO)
        self.joints = Collector(self.probe, JointState, contract.JOINT_STATES)
        self.poses = Collector(self.probe, PoseStamped, contract.EE_POSE)
        self.clock = Collector(self.probe, Clock, contract.CLOCK)
        self.twist_pub = self.probe.create_publisher(TwistStamped, contract.SERVO_TWIST.name,
                                                     qos(contract.SERVO_TWIST))
        self.gripper_pub = self.probe.create_publisher(JointTrajectory, contract.GRIPPER_TRAJECTORY.name,
                                                       qos(contract.GRIPPER_TRAJECTORY))
        assert wait_for(lambda: self.probe.count_subscribers(contract.SERVO_TWIST.name) > 0
                        and self.probe.count_publishers(contract.CAMERA_IMAGE.name) > 0, 10.0)
        time.sleep(0.2)

    def start(self, seed: int = 0, task: str = "reach", max_steps: int = 0, color: str = "") -> EpisodeStatus:
        self.client.configure(seed, task, color, max_steps)
        status = self.client.reset()
        self.client.pause(False)
        return status

    def twist(self, stamp: Any, linear=(0.0, 0.0, 0.0), angular=(0.0, 0.0, 0.0), frame: str = BASE) -> None:
        msg = TwistStamped()
        msg.header.stamp, msg.header.frame_id = stamp, frame
        t = msg.twist
        t.linear.x, t.linear.y, t.linear.z = (float(v) for v in linear)
        t.angular.x, t.angular.y, t.angular.z = (float(v) for v in angular)
        self.twist_pub.publish(msg)

    def answer_frames(self, answer: Any, count: int) -> None:
        """Call ``answer(image_msg)`` for the next ``count`` camera frames, as a teleop would."""
        done = [0]

        def on_image(msg: Image) -> None:
            if done[0] < count:
                done[0] += 1
                answer(msg)

        self.probe.create_subscription(Image, contract.CAMERA_IMAGE.name, on_image, qos(contract.CAMERA_IMAGE))


def test_observations_fit_the_contract(graph: RosGraph) -> None:
    rig = Rig(graph)
    status = rig.start(seed=3)
    assert (status.seed, status.task, status.color, status.instruction) == (3, "reach", "red", "reach the red cube")
    assert wait_for(lambda: len(rig.images()) >= 3 and len(rig.depth()) >= 3, 10.0)
    rig.client.pause(True)
    image, depth, info = rig.images()[0], rig.depth()[0], rig.info()[0]
    assert (image.encoding, image.width, image.height) == ("rgb8", 320, 240)
    assert image.header.frame_id == depth.header.frame_id == info.header.frame_id == THIRD_PERSON_CAMERA.optical_frame
    assert image.header.stamp == depth.header.stamp == info.header.stamp
    assert message_to_rgb8(image).shape == (240, 320, 3)
    metres = depth_to_meters(depth)
    assert depth.encoding == "32FC1" and metres.shape == (240, 320)
    assert 0.3 < float(np.nanmedian(metres[np.isfinite(metres)])) < 3.0
    intrinsics = CameraIntrinsics.from_config(THIRD_PERSON_CAMERA)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), intrinsics.k)
    np.testing.assert_allclose(np.reshape(info.p, (3, 4)), intrinsics.p)
    joints = rig.joints()[-1]
    assert tuple(joints.name) == (*PANDA_ARM_JOINTS, *PANDA_FINGER_JOINTS)
    assert len(joints.position) == len(joints.velocity) == len(joints.effort) == 9
    assert all(p.header.frame_id == BASE for p in rig.poses())
    clock = [seconds(c) for c in rig.clock()]
    assert clock[0] == pytest.approx(CLOCK_START_S) and all(b > a for a, b in itertools.pairwise(clock))
    # frames once per 0.1 s control step, states at 60 Hz, all on the clock
    frames = [seconds(m) for m in rig.images()]
    np.testing.assert_allclose(np.diff(frames), 0.1, atol=1e-6)
    np.testing.assert_allclose(np.diff([seconds(m) for m in rig.joints()]), 1 / 60, atol=1e-6)
    # a late joiner still gets the instruction and the status (latched)
    late = graph.node("late")
    instruction = Collector(late, String, contract.INSTRUCTION)
    episode = Collector(late, String, contract.SIM_EPISODE)
    assert wait_for(lambda: instruction() and episode(), 5.0)
    assert instruction()[-1].data == "reach the red cube"
    assert EpisodeStatus.from_json(episode()[-1].data).seed == 3


def test_synchronous_time_waits_for_each_answer(graph: RosGraph) -> None:
    rig = Rig(graph, sync_timeout_s=30.0)
    status = rig.start()
    time.sleep(1.0)  # nobody answers: time stands still
    assert [seconds(m) for m in rig.images()] == [status.start_time]
    assert max(seconds(c) for c in rig.clock()) == pytest.approx(status.start_time)
    rig.answer_frames(lambda msg: rig.twist(msg.header.stamp, linear=(0.05, 0, 0)), count=3)
    rig.client.pause(True)
    rig.client.pause(False)  # unpausing re-publishes the current frame, which the answerer now sees
    assert wait_for(lambda: len(rig.images()) >= 5, 10.0)
    time.sleep(0.5)
    stamps = [seconds(m) for m in rig.images()]
    assert stamps[-1] == pytest.approx(status.start_time + 0.3)  # three answers, three control steps
    assert rig.sim.counters["accepted"] == 3 and rig.sim.counters["sync_timeouts"] == 0
    assert rig.client.status.step == 3


def test_arm_halts_within_0_1_s_of_sim_time_after_the_stream_stops(graph: RosGraph) -> None:
    """Servo semantics over ROS: the last twist goes stale 0.1 s after its stamp; 0.1 s later the arm is still."""
    rig = Rig(graph, state_rate_hz=240.0)
    answered: list[float] = []

    def answer(msg: Image) -> None:
        answered.append(seconds(msg))
        rig.twist(msg.header.stamp, linear=(0.3, 0.0, -0.1), angular=(0.0, 0.0, 0.3))

    rig.answer_frames(answer, count=8)
    rig.start()
    assert wait_for(lambda: len(rig.images()) >= 12, 20.0)  # 8 answered steps, then timeouts
    rig.client.pause(True)
    stale_at = answered[-1] + 0.1
    states = [(seconds(m), float(np.linalg.norm(m.velocity[:7]))) for m in rig.joints()]
    poses = {seconds(m): np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z]) for m in rig.poses()}
    moving_before = [v for t, v in states if stale_at - 0.05 <= t <= stale_at]
    assert min(moving_before) > 0.3, "the arm should still be executing the last twist until it goes stale"
    halted_at = next(t for t, v in states if t >= stale_at and v < 1e-3)
    assert halted_at - stale_at <= 0.1, f"joints still moving {halted_at - stale_at:.3f} s after the stale point"
    still = [p for t, p in sorted(poses.items()) if t >= stale_at + 0.1]
    assert len(still) > 24 and np.ptp(np.array(still), axis=0).max() < 1e-3


def test_stale_frameless_and_unknown_frame_twists_do_nothing(graph: RosGraph) -> None:
    rig = Rig(graph)
    cases = iter([("stale", BASE, -0.15), ("empty", "", 0.0), ("unknown", "base_link", 0.0)])

    def answer(msg: Image) -> None:
        _, frame, age = next(cases)
        stamp = msg.header.stamp
        shifted = seconds(msg) + age
        stamp.sec, stamp.nanosec = int(shifted), round((shifted - int(shifted)) * 1e9)
        rig.twist(stamp, linear=(0.2, 0.0, 0.0), frame=frame)

    rig.answer_frames(answer, count=3)
    rig.start()
    assert wait_for(lambda: len(rig.images()) >= 4, 10.0)
    rig.client.pause(True)
    counters = rig.sim.counters
    assert (counters["stale"], counters["rejected"], counters["accepted"]) == (1, 2, 0)
    positions = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in rig.poses()])
    assert np.ptp(positions, axis=0).max() < 1e-3


def test_gripper_trajectory_and_servo_pause(graph: RosGraph) -> None:
    rig = Rig(graph)

    def answer(msg: Image) -> None:
        point = JointTrajectoryPoint(positions=[0.01, 0.01], time_from_start=Duration(nanosec=500_000_000))
        rig.gripper_pub.publish(JointTrajectory(joint_names=list(PANDA_FINGER_JOINTS), points=[point]))
        rig.twist(msg.header.stamp)

    rig.answer_frames(answer, count=8)
    rig.start()
    assert wait_for(lambda: len(rig.images()) >= 8, 10.0)
    fingers = dict(zip(rig.joints()[-1].name, rig.joints()[-1].position, strict=True))
    assert sum(fingers[n] for n in PANDA_FINGER_JOINTS) == pytest.approx(0.02, abs=0.003)
    assert rig.sim.counters["gripper_commands"] >= 1
    # MoveIt Servo's pause service: while paused, twists are ignored
    response = call(rig.probe, SetBool, f"/servo_node/{contract.SERVO_PAUSE_SERVICE}", SetBool.Request(data=True))
    assert response.success and rig.sim.cell.servo_paused
    rig.answer_frames(lambda msg: rig.twist(msg.header.stamp, linear=(0.1, 0, 0)), count=2)
    rig.client.pause(True)
    rig.client.pause(False)
    assert wait_for(lambda: rig.sim.counters["paused"] >= 1, 10.0)


def test_reset_parameters_and_episode_end(graph: RosGraph) -> None:
    rig = Rig(graph)
    status = rig.start(seed=4, task="pick", color="blue", max_steps=3)
    assert (status.instruction, status.max_steps, status.done) == ("pick up the blue cube", 3, False)
    assert wait_for(lambda: rig.client.status is not None and rig.client.status.done, 10.0)
    final = rig.client.status
    assert (final.step, final.success, final.done) == (3, False, True)
    time.sleep(0.8)  # over: time holds until the next reset
    assert max(seconds(c) for c in rig.clock()) == pytest.approx(final.time)
    with pytest.raises(EpisodeClientError, match="task must be reach or pick"):
        rig.client.configure(0, "stack")
    request = SetParameters.Request(parameters=[Parameter("mode", value="realtime").to_parameter_msg()])
    result = call(rig.probe, SetParameters, "/sim_arm_node/set_parameters", request).results[0]
    assert not result.successful and "cannot change at run time" in result.reason
    second = rig.start(seed=5)
    assert second.episode == final.episode + 1 and second.start_time > final.time  # the clock never goes back


def test_realtime_mode_follows_the_wall_clock(graph: RosGraph) -> None:
    """Sim time runs by itself, never faster than the wall clock (slower only on a starved machine); pause holds it."""
    rig = Rig(graph, mode="realtime", image_width=64, image_height=48, state_rate_hz=30.0, start_paused=False,
              autostart_episode=True)
    assert wait_for(lambda: len(rig.clock()) > 5, 5.0)
    wall_start, sim_start = time.monotonic(), rig.sim.session.clock()
    time.sleep(1.0)
    wall, sim = time.monotonic() - wall_start, rig.sim.session.clock() - sim_start
    # Never ahead of the wall clock. How far behind depends on what else shares these 2 cores (this
    # process also runs the test's nodes): here only that it advances on its own is checked.
    assert 0.05 * wall <= sim <= wall + 0.05, (sim, wall)
    rig.client.pause(True)
    paused_at = rig.sim.session.clock()
    time.sleep(0.3)
    assert rig.sim.session.clock() == paused_at
    last = [seconds(c) for c in rig.clock()]
    assert last[-1] <= paused_at and all(b > a for a, b in itertools.pairwise(last))


@pytest.mark.parametrize(("family", "seeds"), [("reach", (0, 1, 2)), ("pick", (0, 4))])
def test_scripted_expert_succeeds_through_the_ros_interface(graph: RosGraph, family: str, seeds: tuple) -> None:
    """The expert as a ROS teleop (topics only) reproduces the in-process episode runner step for step."""
    rig = Rig(graph, sync_timeout_s=2.0)
    graph.add(ExpertTeleopNode(context=graph.context, parameter_overrides=[Parameter("use_sim_time", value=True)]))
    assert wait_for(lambda: rig.probe.count_publishers(contract.GRIPPER_TRAJECTORY.name) > 0, 5.0)
    time.sleep(0.3)
    with Workcell() as cell:
        for seed in seeds:
            task = choose_task(family, seed)
            reference = run_episode(task, seed, ScriptedExpert(task), workcell=cell)
            status = rig.start(seed=seed, task=family)
            final = rig.client.wait_done(status.episode, timeout=120.0)
            rig.client.pause(True)
            assert final.success, f"{family} seed {seed} failed through ROS"
            assert final.step == reference.steps


def test_realtime_teleop_on_the_system_clock(graph: RosGraph) -> None:
    """publish_clock false: stamps follow the system clock like a hardware driver's; a 50 Hz teleop stamping
    with time.time() moves the arm, and once it stops the arm halts."""
    rig = Rig(graph, mode="realtime", publish_clock=False, image_width=64, image_height=48, state_rate_hz=30.0,
              start_paused=False, autostart_episode=True)
    assert wait_for(lambda: len(rig.images()) >= 3 and rig.poses(), 5.0)
    assert not rig.clock()
    assert abs(seconds(rig.joints()[-1]) - time.time()) < 1.0  # epoch time, not the 1 s sim clock start
    start_x = rig.poses()[-1].pose.position.x
    wall_start = time.monotonic()
    while time.monotonic() - wall_start < 1.0:
        stamp = stamp_of(time.time())
        rig.twist(stamp, linear=(0.1, 0.0, 0.0))
        time.sleep(0.02)
    stopped = time.time()

    def halted() -> bool:  # a joint state from well after the stream stopped shows the arm still
        joints = rig.joints()[-1]
        return seconds(joints) > stopped + 0.3 and max(abs(v) for v in joints.velocity[:7]) < 1e-3

    assert wait_for(halted, 10.0)
    moved = rig.poses()[-1].pose.position.x - start_x
    assert rig.sim.counters["accepted"] > 0, rig.sim.counters  # a starved machine delivers some twists stale
    assert 0.005 < moved < 0.11, rig.sim.counters


def test_first_twist_answers_step_at_once_and_older_tails_are_ignored(graph: RosGraph) -> None:
    """sync_answer_end first_twist (a bridge with synchronous_stream, the expert): each step runs as soon as its
    twist is in; a twist stamped before the frame (an older answer's tail) is not the step's command."""
    rig = Rig(graph, sync_answer_end="first_twist", sync_timeout_s=5.0)

    def answer(msg: Image) -> None:
        old = stamp_of(seconds(msg) - 0.1)
        rig.twist(old, linear=(-0.2, 0.0, 0.0))  # the tail of the previous answer: ignored
        point = JointTrajectoryPoint(positions=[0.02, 0.02], time_from_start=Duration(nanosec=500_000_000))
        rig.gripper_pub.publish(JointTrajectory(joint_names=list(PANDA_FINGER_JOINTS), points=[point]))
        rig.twist(msg.header.stamp, linear=(0.1, 0.0, 0.0))

    rig.answer_frames(answer, count=6)
    rig.start(max_steps=6)
    assert wait_for(lambda: rig.sim.status.done, 20.0), rig.sim.counters
    counters = rig.sim.counters
    # a timeout would mean the step waited for something the answer had already given
    assert counters["sync_timeouts"] == 0 and counters["sync_steps"] == 6, counters
    assert counters["accepted"] == 6 and counters["gripper_commands"] == 6, counters
    assert rig.sim.gate.ignored >= 6  # every tail
    xs = [p.pose.position.x for p in wait_until_quiet(rig.poses)]  # the last step's poses still on their way
    assert xs[-1] - xs[0] > 0.03, xs  # 6 steps at +0.1 m/s, never the tails' -0.2


def test_realtime_says_when_it_cannot_render_at_the_camera_rate(graph: RosGraph) -> None:
    """A 640x480 camera at 60 Hz is more rendering than any CPU here affords: physics keeps time, frames are
    skipped, and the diagnostics (WARN) and the log say why, with the measured costs."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    rig = Rig(graph, mode="realtime", image_width=640, image_height=480, camera_rate_hz=60.0, state_rate_hz=30.0,
              start_paused=False, autostart_episode=True, diagnostics_period_s=0.5, publish_depth=False)
    reports = Collector(rig.probe, DiagnosticArray, contract.DIAGNOSTICS)

    def behind() -> list[Any]:
        return [s for a in reports() for s in a.status
                if s.name.startswith("sim_arm_node") and any(kv.key == "real_time_factor" for kv in s.values)
                and "cannot keep real time" in s.message]

    assert wait_for(lambda: behind(), 20.0), [s.message for a in reports() for s in a.status]
    status = behind()[-1]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN
    assert float(values["render_ms"]) > 0 and float(values["camera_hz"]) < 0.9 * 60.0, values
    assert float(values["render_load"]) > 0.9, values  # rendering 60 frames would take most of a second or more
    assert "renders" in status.message and "camera frames per sim second" in status.message
    assert rig.sim.counters["frames_skipped"] > 0, rig.sim.counters
    rig.client.pause(True)


@pytest.mark.parametrize("render_process", [True, False])
def test_realtime_takes_twists_while_a_frame_renders(graph: RosGraph, render_process: bool) -> None:
    """A 640x480 camera at 20 Hz renders for most of every second. In the render process the sim keeps taking
    twists on time; either way frames come out in order, stamped with the sim time they show. (How stale the
    twists get with rendering in the sim's thread is not asserted here: this test's teleop shares the sim's
    interpreter, so the same renders that hold up the sim also hold up the teleop. Across processes, 20
    realtime reach episodes at 30 Hz: 450 accepted / 2005 stale in-thread, 2812 / 16 with the render process.)"""
    rig = Rig(graph, mode="realtime", publish_clock=False, image_width=640, image_height=480, camera_rate_hz=20.0,
              state_rate_hz=30.0, start_paused=False, autostart_episode=True, publish_depth=False,
              render_process=render_process)
    assert (rig.sim._renderer is not None) == render_process
    assert wait_for(lambda: len(rig.images()) >= 2, 20.0)
    before = dict(rig.sim.counters)
    wall_start = time.monotonic()
    while time.monotonic() - wall_start < 2.0:   # a 50 Hz teleop on the system clock
        rig.twist(stamp_of(time.time()), linear=(0.02, 0.0, 0.0))
        time.sleep(0.02)
    time.sleep(0.5)
    rig.client.pause(True)
    counters = rig.sim.counters
    accepted, stale = counters["accepted"] - before["accepted"], counters["stale"] - before["stale"]
    stamps = [seconds(m) for m in rig.images()]
    assert all(b > a for a, b in itertools.pairwise(stamps)) and counters["frames"] >= 5, counters
    if render_process:
        assert accepted >= 60 and stale <= 0.1 * (accepted + stale), counters
        assert counters["frames_skipped"] > 0, counters   # frames due while one rendered were skipped


@pytest.mark.parametrize("mode", ["synchronous", "realtime"])
def test_wrist_inset_goes_out_in_the_camera_image(graph: RosGraph, mode: str) -> None:
    """wrist_inset: the camera image carries the wrist view in its top-right corner, depth there NaN, the rest
    (and CameraInfo) the third-person camera's. Synchronous: the first frame equals a ROS-free render of the
    same scene; realtime: the frames come back from the render process composed the same way."""
    from magma_ros.sim import WorkcellConfig, policy_cameras, wrist_inset_camera
    from magma_ros.sim.render_detail import arm_urdf_for

    realtime = {"mode": "realtime", "start_paused": False, "autostart_episode": True} if mode == "realtime" else {}
    rig = Rig(graph, wrist_inset=True, **realtime)
    if mode == "synchronous":
        rig.start(seed=7, task="pick")
    assert wait_for(lambda: len(rig.images()) >= 2 and len(rig.depth()) >= 2, 20.0)
    rig.client.pause(True)
    inset = wrist_inset_camera(THIRD_PERSON_CAMERA)
    image, depth = message_to_rgb8(rig.images()[0]), depth_to_meters(rig.depth()[0])
    assert image.shape == (240, 320, 3) and rig.info()[0].width == 320
    assert np.isnan(depth[:inset.height, -inset.width:]).all()
    outside = np.ones(depth.shape, bool)
    outside[:inset.height, -inset.width:] = False
    assert np.isfinite(depth[outside]).mean() > 0.9   # the rest: the table, walls, arm (and a little sky)
    if mode == "synchronous":
        config = WorkcellConfig(seed=7, cameras=policy_cameras(THIRD_PERSON_CAMERA, True),
                                arm_urdf=arm_urdf_for(rig.sim.params.render_detail))
        with Workcell(config) as cell:
            cell.reset(7)
            expected = cell.render_view(THIRD_PERSON_CAMERA.name, inset.name)
        assert np.array_equal(image, expected.rgb)
        truth = np.where(np.isinf(expected.depth), np.nan, expected.depth)
        np.testing.assert_array_equal(depth[outside], truth[outside])
    else:
        assert rig.sim._renderer is not None
        assert image[:inset.height, -inset.width:].std() > 10   # a picture, not a blank corner
