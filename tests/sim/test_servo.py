"""Servo maths without pybullet: twist scaling, damped least squares, joint limits."""

import numpy as np
import pytest

from magma_ros.sim import CommandError, CommandOutcome, ServoConfig, ServoStatus
from magma_ros.sim.servo import (
    JointLimits,
    ServoLoop,
    TwistCommand,
    damped_least_squares,
    is_stale,
    joint_velocities,
    scale_twist,
)


def test_speed_units_are_capped_keeping_direction():
    config = ServoConfig()
    linear, angular = scale_twist(np.array([3.0, 4.0, 0.0]), np.array([0.0, 0.0, 0.1]), config)
    np.testing.assert_allclose(linear, [0.24, 0.32, 0.0])
    np.testing.assert_allclose(angular, [0.0, 0.0, 0.1])


def test_unitless_twists_are_fractions_of_the_scales():
    config = ServoConfig(command_in_type="unitless")
    linear, angular = scale_twist(np.array([0.5, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]), config)
    np.testing.assert_allclose(linear, [0.2, 0.0, 0.0])
    np.testing.assert_allclose(angular, [0.0, -0.8, 0.0])


def test_staleness_boundary():
    command = TwistCommand.create([0, 0, 0], [0, 0, 0], stamp=1.0, frame_id="base")
    assert not is_stale(command, 1.1, 0.1)
    assert is_stale(command, 1.1001, 0.1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0, 0], [0, 0, 0], 0.0, "base"), "three numbers"),
        (([0, 0, float("inf")], [0, 0, 0], 0.0, "base"), "finite"),
        (([0, 0, 0], [0, 0, 0], float("nan"), "base"), "stamp"),
        (([0, 0, 0], [0, 0, 0], 0.0, ""), "frame_id is required"),
    ],
)
def test_malformed_twists_are_rejected(args, match):
    with pytest.raises(CommandError, match=match):
        TwistCommand.create(*args)


def test_damped_least_squares_solves_a_well_conditioned_jacobian():
    rng = np.random.default_rng(0)
    jacobian = rng.normal(size=(6, 7))
    twist = rng.normal(size=6)
    qdot = damped_least_squares(jacobian, twist, 1e-6)
    np.testing.assert_allclose(jacobian @ qdot, twist, atol=1e-6)


def test_joint_at_its_limit_is_frozen_and_others_take_over():
    config = ServoConfig()
    limits = JointLimits(np.full(7, -1.0), np.full(7, 1.0), np.full(7, 2.0))
    jacobian = np.hstack([np.eye(6), np.eye(6)[:, :1]])  # joints 0 and 6 both move x
    positions = np.zeros(7)
    positions[0] = 1.0 - config.joint_limit_margin  # joint 0 at its upper margin
    qdot, status = joint_velocities(jacobian, np.array([0.2, 0, 0, 0, 0, 0]), positions, limits, config)
    assert status is ServoStatus.JOINT_BOUND
    assert qdot[0] == 0.0
    assert qdot[6] == pytest.approx(0.2, rel=1e-2)


def test_joint_speeds_stay_under_their_limits():
    config = ServoConfig(ik_damping=0.0)
    limits = JointLimits(np.full(7, -3.0), np.full(7, 3.0), np.full(7, 0.1))
    jacobian = np.hstack([np.eye(6), np.zeros((6, 1))])
    qdot, _ = joint_velocities(jacobian, np.array([0.4, 0.2, 0, 0, 0, 0]), np.zeros(7), limits, config)
    assert np.max(np.abs(qdot)) == pytest.approx(0.1)
    np.testing.assert_allclose(qdot[:2] / np.linalg.norm(qdot[:2]), np.array([2, 1]) / np.sqrt(5))


def make_loop(**overrides) -> ServoLoop:
    limits = JointLimits(np.full(7, -3.0), np.full(7, 3.0), np.full(7, 2.0))
    return ServoLoop(ServoConfig(**overrides), limits, np.zeros(7))


def twist(stamp: float, vx: float = 0.1) -> TwistCommand:
    return TwistCommand.create([vx, 0, 0], [0, 0, 0], stamp, "base")


def identity_to_base(command):
    return command.linear, command.angular


def jacobian_at(_positions):
    return np.hstack([np.eye(6), np.zeros((6, 1))])


def test_loop_accepts_fresh_and_ignores_stale_out_of_order_and_paused():
    loop = make_loop()
    assert loop.accept(twist(1.0), now=1.05) is CommandOutcome.ACCEPTED
    assert loop.accept(twist(0.9), now=1.05) is CommandOutcome.STALE
    assert loop.accept(twist(0.98), now=1.05) is CommandOutcome.OUT_OF_ORDER
    with pytest.raises(CommandError, match="ahead of sim time"):
        loop.accept(twist(1.5), now=1.05)
    loop.set_paused(True)
    assert loop.command is None
    assert loop.accept(twist(1.05), now=1.05) is CommandOutcome.PAUSED


def test_loop_drives_then_halts_when_the_command_ages_out():
    loop = make_loop()
    loop.accept(twist(0.0), now=0.0)
    q = np.zeros(7)
    loop.update(0.05, q, np.zeros(7), identity_to_base, jacobian_at)
    assert loop.active and loop.velocities[0] == pytest.approx(0.1, rel=0.01)
    loop.integrate(0.1)
    assert loop.reference[0] == pytest.approx(0.01, rel=0.01)
    moving = np.full(7, 0.5)
    loop.update(0.11, q + 0.005, moving, identity_to_base, jacobian_at)
    assert not loop.active and loop.command is None
    np.testing.assert_array_equal(loop.reference, q + 0.005)  # braking: no pull back
    loop.update(0.12, q + 0.006, np.zeros(7), identity_to_base, jacobian_at)
    np.testing.assert_array_equal(loop.reference, q + 0.005)  # settled: held
