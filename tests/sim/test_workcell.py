"""The pybullet workcell: state, Servo semantics, gripper, determinism, isolation."""

from __future__ import annotations

import numpy as np
import pytest

from magma_ros.sim import (
    CommandError,
    CommandOutcome,
    FrameError,
    SceneError,
    ServoStatus,
    SimError,
    Workcell,
    WorkcellConfig,
)
from magma_ros.sim.config import PANDA_ARM_JOINTS, PANDA_FINGER_JOINTS

TIMEOUT = 0.1


def stream(cell: Workcell, linear, angular=(0.0, 0.0, 0.0), seconds: float = 0.5, period: float = 0.1, frame=None):
    """Send a twist every ``period`` for ``seconds``, stepping in between (a teleoperator)."""
    start = cell.sim_time
    for k in range(round(seconds / period)):
        outcome = cell.command_twist(linear, angular, stamp=cell.sim_time, frame_id=frame or cell.base_frame)
        assert outcome is CommandOutcome.ACCEPTED
        cell.advance_to(start + (k + 1) * period)


def ee_speed(cell: Workcell) -> float:
    return float(np.linalg.norm(cell.ee_velocity()[0]))


def test_initial_state(cell):
    joints = cell.joint_state()
    assert joints.names == (*PANDA_ARM_JOINTS, *PANDA_FINGER_JOINTS)
    assert joints.positions.shape == joints.velocities.shape == joints.efforts.shape == (9,)
    np.testing.assert_allclose(joints.positions[:7], cell.config.home_joint_positions, atol=1e-9)
    pose = cell.ee_pose()
    np.testing.assert_allclose(pose.position, [0.307, 0.0, 0.485], atol=0.01)
    np.testing.assert_allclose(np.abs(pose.rotation()[:, 2]), [0, 0, 1], atol=1e-3)  # tool points down
    assert pose.rotation()[2, 2] < 0
    assert cell.sim_time == 0.0 and cell.gripper_width() == pytest.approx(0.08, abs=1e-6)
    cubes = cell.cube_poses()
    assert set(cubes) == {"red", "green", "blue"}
    for pose in cubes.values():
        assert pose.position[2] == pytest.approx(cell.config.scene.cube_size / 2, abs=1e-3)


def test_arm_holds_still_without_commands(cell):
    before = cell.ee_pose().position
    cell.step(1.0)
    assert cell.sim_time == pytest.approx(1.0)
    np.testing.assert_allclose(cell.ee_pose().position, before, atol=2e-3)
    assert ee_speed(cell) < 1e-3


@pytest.mark.parametrize("frame", ["panda_link0", "world"])
def test_twist_moves_the_tcp_at_the_commanded_speed(cell, frame):
    start = cell.ee_pose().position
    stream(cell, [0.0, 0.1, -0.05], seconds=1.0, frame=frame)
    moved = cell.ee_pose().position - start
    np.testing.assert_allclose(moved, [0.0, 0.1, -0.05], atol=0.01)


def test_twist_in_the_tool_frame_is_rotated_into_the_base_frame(cell):
    start = cell.ee_pose()
    stream(cell, [0.0, 0.0, 0.1], seconds=0.5, frame=cell.ee_frame)  # tool z points down
    moved = cell.ee_pose().position - start.position
    np.testing.assert_allclose(moved, start.rotation() @ [0.0, 0.0, 0.05], atol=0.006)
    assert moved[2] < -0.04


def test_twist_in_a_camera_frame(cell):
    """Any frame of the description is known: "forward" for the third-person camera is optical z."""
    optical = cell.frame_pose("third_person_camera_optical_frame").rotation()
    start = cell.ee_pose().position
    stream(cell, [0.0, 0.0, 0.1], seconds=0.5, frame="third_person_camera_optical_frame")
    np.testing.assert_allclose(cell.ee_pose().position - start, optical[:, 2] * 0.05, atol=0.006)


def test_angular_twist_turns_the_tool(cell):
    start_yaw = np.arctan2(*cell.ee_pose().rotation()[1::-1, 0])
    stream(cell, [0.0, 0.0, 0.0], [0.0, 0.0, 0.5], seconds=1.0)
    yaw = np.arctan2(*cell.ee_pose().rotation()[1::-1, 0])
    assert yaw - start_yaw == pytest.approx(0.5, abs=0.05)


def test_speed_is_capped_like_servo_scale_linear(cell):
    start = cell.ee_pose().position
    stream(cell, [0.0, 0.0, -2.0], seconds=0.5)
    assert start[2] - cell.ee_pose().position[2] <= 0.4 * 0.5 + 1e-3


def test_arm_halts_within_0_1_s_after_the_stream_stops(cell):
    """Servo semantics: a 10 Hz stream stops; once the last twist is 0.1 s old the arm halts."""
    stream(cell, [0.3, 0.0, -0.1], [0.0, 0.0, 0.3], seconds=1.0)
    last_stamp = cell.sim_time - 0.1
    assert ee_speed(cell) > 0.25  # still executing the last twist, which is exactly 0.1 s old
    stale_at = last_stamp + TIMEOUT
    while ee_speed(cell) > 1e-3:
        cell.step_ticks(1)
        assert cell.sim_time - stale_at <= 0.1, "arm still moving 0.1 s after the command went stale"
    settle = cell.ee_pose().position
    cell.step(0.5)
    np.testing.assert_allclose(cell.ee_pose().position, settle, atol=1e-3)
    assert not cell.servo_active


def test_halt_time_from_a_100_hz_stream(cell):
    """Like the Servo bridge (re-stamps at 100 Hz): halted by 0.1 s after the stream stops."""
    stream(cell, [0.0, 0.3, 0.0], seconds=0.5, period=0.01)
    stopped_at = cell.sim_time  # the next twist never comes
    cell.advance_to(stopped_at + TIMEOUT + 0.05)
    assert ee_speed(cell) < 1e-3
    assert cell.sim_time - stopped_at <= 0.16


def test_stale_command_is_ignored(cell):
    cell.step(0.5)
    start = cell.ee_pose().position
    outcome = cell.command_twist([0.2, 0.0, 0.0], [0, 0, 0], stamp=cell.sim_time - 0.15, frame_id=cell.base_frame)
    assert outcome is CommandOutcome.STALE
    cell.step(0.2)
    np.testing.assert_allclose(cell.ee_pose().position, start, atol=1e-3)


def test_command_ages_out_between_steps(cell):
    cell.command_twist([0.2, 0.0, 0.0], [0, 0, 0], stamp=cell.sim_time, frame_id=cell.base_frame)
    cell.step(0.05)
    assert cell.servo_active
    cell.step(0.1)
    assert not cell.servo_active


def test_bad_frame_and_malformed_commands_are_rejected(cell):
    with pytest.raises(FrameError, match="'base_link' is unknown"):
        cell.command_twist([0.1, 0, 0], [0, 0, 0], stamp=0.0, frame_id="base_link")
    with pytest.raises(CommandError, match="frame_id is required"):
        cell.command_twist([0.1, 0, 0], [0, 0, 0], stamp=0.0, frame_id="")
    with pytest.raises(CommandError, match="ahead of sim time"):
        cell.command_twist([0.1, 0, 0], [0, 0, 0], stamp=5.0, frame_id=cell.base_frame)
    with pytest.raises(CommandError, match="finite"):
        cell.command_twist([np.nan, 0, 0], [0, 0, 0], stamp=0.0, frame_id=cell.base_frame)
    with pytest.raises(CommandError, match="multiple of the physics timestep"):
        cell.step(0.001)
    with pytest.raises(CommandError, match="finite"):
        cell.advance_to(float("nan"))
    assert issubclass(FrameError, SimError) and issubclass(FrameError, ValueError)


def test_paused_servo_ignores_twists(cell):
    cell.set_servo_paused(True)
    start = cell.ee_pose().position
    assert cell.command_twist([0.2, 0, 0], [0, 0, 0], stamp=0.0, frame_id=cell.base_frame) is CommandOutcome.PAUSED
    cell.step(0.3)
    np.testing.assert_allclose(cell.ee_pose().position, start, atol=1e-3)
    cell.set_servo_paused(False)
    stream(cell, [0.2, 0, 0], seconds=0.2)
    assert cell.ee_pose().position[0] > start[0] + 0.02


def test_advance_to_lands_on_the_next_substep(cell):
    assert cell.advance_to(0.01) == 3  # 240 Hz substeps: 0.0125 s is the first at or after
    assert cell.sim_time == pytest.approx(0.0125) and cell.ticks == 3
    assert cell.advance_to(0.005) == 0
    assert cell.advance_to(0.1) == 21


def test_joints_never_cross_their_limits(cell):
    limits_lo = np.array([-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671])
    limits_hi = -limits_lo
    limits_hi[3], limits_hi[5] = 0.0, 3.8223
    statuses = set()
    for _ in range(60):  # far out of reach, spinning
        cell.command_twist([0.4, 0.0, 0.4], [0.0, 0.0, 0.8], stamp=cell.sim_time, frame_id=cell.base_frame)
        cell.step(0.1)
        statuses.add(cell.servo_status)
    assert ServoStatus.JOINT_BOUND in statuses
    q = cell.joint_state().positions[:7]
    margin = cell.config.servo.joint_limit_margin
    assert np.all(q >= limits_lo + margin - 0.01) and np.all(q <= limits_hi - margin + 0.01)


def test_gripper_width_and_joint_trajectory_commands(cell):
    assert cell.command_gripper(0.03) == pytest.approx(0.03)
    cell.step(1.0)
    assert cell.gripper_width() == pytest.approx(0.03, abs=1e-3)
    assert cell.command_gripper(0.5) == pytest.approx(0.08)  # clamped
    assert cell.command_gripper_joints(["panda_finger_joint1"], [0.01]) == pytest.approx(0.02)
    cell.step(1.0)
    assert cell.gripper_width() == pytest.approx(0.02, abs=1e-3)
    with pytest.raises(CommandError, match="unknown gripper joints"):
        cell.command_gripper_joints(["panda_joint1"], [0.0])
    with pytest.raises(CommandError, match="finite"):
        cell.command_gripper(float("inf"))


def run_commands(cell: Workcell, seed: int) -> np.ndarray:
    """A fixed command sequence (move, descend, close, lift) -> joint positions per 0.1 s."""
    cell.reset(seed)
    rows = []
    script = [([0.2, 0.0, -0.2], 0.08)] * 8 + [([0.0, 0.0, 0.0], 0.0)] * 5 + [([0.0, 0.1, 0.2], 0.0)] * 8
    for linear, width in script:
        cell.command_twist(linear, [0.0, 0.0, 0.2], stamp=cell.sim_time, frame_id=cell.base_frame)
        cell.command_gripper(width)
        cell.step(0.1)
        rows.append(np.concatenate([cell.joint_state().positions, *(p.position for p in cell.cube_poses().values())]))
    return np.array(rows)


def test_same_seed_and_commands_give_the_same_trajectory():
    with Workcell(WorkcellConfig(seed=3)) as first, Workcell(WorkcellConfig(seed=11)) as second:
        a = run_commands(first, 3)
        run_commands(second, 5)  # a used instance...
        b = run_commands(second, 3)  # ...reset to the same seed
        c = run_commands(first, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_instances_in_one_process_do_not_interfere():
    with Workcell(WorkcellConfig(seed=2)) as alone:
        reference = [alone.ee_pose().position]
        for _ in range(5):
            alone.command_twist([0.1, 0, 0], [0, 0, 0], stamp=alone.sim_time, frame_id=alone.base_frame)
            alone.step(0.1)
            reference.append(alone.ee_pose().position)
    with Workcell(WorkcellConfig(seed=2)) as a, Workcell(WorkcellConfig(seed=9)) as b:
        positions = [a.ee_pose().position]
        for _ in range(5):
            b.command_twist([0, -0.2, 0], [0, 0, 0], stamp=b.sim_time, frame_id=b.base_frame)
            a.command_twist([0.1, 0, 0], [0, 0, 0], stamp=a.sim_time, frame_id=a.base_frame)
            b.step(0.05)
            a.step(0.1)
            positions.append(a.ee_pose().position)
        assert a.sim_time != b.sim_time
    np.testing.assert_array_equal(np.array(reference), np.array(positions))


def test_seeds_change_the_layout_and_reset_rewinds_time(cell):
    first = {c: p.position for c, p in cell.cube_poses().items()}
    cell.step(0.5)
    cell.reset(1)
    assert cell.sim_time == 0.0 and cell.seed == 1
    assert any(np.linalg.norm(first[c] - p.position) > 0.01 for c, p in cell.cube_poses().items())
    with pytest.raises(SceneError, match="no 'purple' cube"):
        cell.cube_pose("purple")


def test_frame_poses(cell):
    np.testing.assert_allclose(cell.frame_pose(cell.ee_frame).position, cell.ee_pose().position)
    wrist = cell.frame_pose("wrist_camera_optical_frame")
    hand = cell.frame_pose("panda_hand")
    assert np.linalg.norm(wrist.position - hand.position) < 0.1
    with pytest.raises(FrameError):
        cell.frame_pose("nowhere")


def test_closed_workcell_refuses_work():
    cell = Workcell()
    cell.close()
    cell.close()  # idempotent
    with pytest.raises(SimError, match="closed"):
        cell.step(0.1)
