"""The synchronous-mode gate: one answer per observation, complete at a stream's zero, after quiet, or a timeout."""

from __future__ import annotations

import pytest

from magma_ros.sim import ConfigError
from magma_ros.sim.lockstep import GateState, LockstepGate


def gate(end: str = "zero_twist") -> LockstepGate:
    return LockstepGate(timeout_s=1.0, quiet_s=0.1, end=end, is_zero=lambda twist: twist == "zero")


def test_holds_until_an_observation_is_out():
    g = gate()
    g.on_twist("early", now=0.0)
    assert g.poll(5.0) is None
    assert g.ignored == 1 and g.state is GateState.HOLDING


def test_a_bridge_stream_is_one_answer_ended_by_its_zero():
    g = gate()
    g.observation_published(now=0.0)
    g.on_twist("zero", now=0.01)  # the tail of the previous stream opens nothing
    assert g.poll(0.3) is None and g.state is GateState.AWAITING
    g.on_twist("v", now=0.4)
    g.on_gripper("close", now=0.401)  # the bridge sends it right after its first twist
    for k in range(1, 5):  # re-sent at 50 Hz; a starved executor may leave long gaps: still one answer
        g.on_twist("v", now=0.4 + 0.15 * k)
        assert g.poll(0.54 + 0.15 * k) is None
    g.on_twist("zero", now=1.1)
    command = g.poll(1.105)
    assert command is not None and (command.twist, command.gripper, command.timed_out) == ("v", "close", False)
    assert command.commands == 7
    g.on_twist("zero", now=1.4)  # more zeros of the same stream: ignored
    assert g.poll(10.0) is None and g.ignored == 2


def test_a_teleop_answer_is_complete_after_quiet():
    g = gate("quiet")
    g.observation_published(now=0.0)
    g.on_gripper("open", now=0.2)
    assert g.poll(0.5) is None  # a gripper command alone does not complete an answer
    g.on_twist("zero", now=0.5)  # a zero twist is a legitimate answer here
    assert g.poll(0.55) is None
    command = g.poll(0.61)
    assert command is not None and (command.twist, command.gripper, command.timed_out) == ("zero", "open", False)


def test_no_answer_times_out_with_what_did_arrive():
    g = gate()
    g.observation_published(now=0.0)
    g.on_gripper("close", now=0.1)
    assert g.poll(0.99) is None
    command = g.poll(1.0)
    assert command is not None and command.timed_out and command.twist is None and command.gripper == "close"


def test_a_stream_that_never_ends_is_cut_at_the_timeout():
    g = gate()
    g.observation_published(now=0.0)
    t = 0.2
    while t < 1.15:
        g.on_twist("v", now=t)
        assert g.poll(t) is None
        t += 0.02
    command = g.poll(1.25)
    assert command is not None and command.twist == "v" and command.timed_out


def test_hold_drops_an_answer_in_progress():
    g = gate()
    g.observation_published(now=0.0)
    g.on_twist("v", now=0.1)
    g.hold()
    assert g.poll(5.0) is None


@pytest.mark.parametrize(("timeout", "quiet", "end"), [
    (0.0, 0.1, "quiet"), (1.0, 0.0, "quiet"), (0.1, 0.1, "quiet"), (float("nan"), 0.1, "quiet"), (1.0, 0.1, "x")])
def test_bad_settings_are_refused(timeout, quiet, end):
    with pytest.raises(ConfigError):
        LockstepGate(timeout, quiet, end)


def test_first_twist_completes_an_answer_at_once_with_the_gripper_sent_before_it():
    g = gate("first_twist")
    g.observation_published(now=0.0, stamp_ns=1_000)
    g.on_gripper("close", now=0.001)
    assert g.poll(0.001) is None  # a gripper command alone is not an answer
    g.on_twist("zero", now=0.002, stamp_ns=1_000)  # a zero twist is a whole answer here (the arm halts)
    command = g.poll(0.002)  # no wall-clock wait: complete at the twist
    assert command is not None and (command.twist, command.gripper, command.timed_out) == ("zero", "close", False)
    g.on_twist("zero", now=0.003, stamp_ns=1_000)  # the zeros that end a bridge's answer: ignored
    assert g.poll(0.5) is None and g.ignored == 1


def test_first_twist_ignores_the_tail_of_an_older_answer_by_its_stamp():
    g = gate("first_twist")
    g.observation_published(now=0.0, stamp_ns=2_000)
    g.on_twist("v_old", now=0.001, stamp_ns=1_999)  # stamped before the observation
    assert g.poll(0.01) is None and g.state is GateState.AWAITING and g.ignored == 1
    g.on_twist("v_new", now=0.02, stamp_ns=2_000)
    command = g.poll(0.02)
    assert command is not None and command.twist == "v_new" and command.commands == 1


def test_first_twist_still_times_out_without_an_answer():
    g = gate("first_twist")
    g.observation_published(now=0.0, stamp_ns=5)
    assert g.poll(0.99) is None
    command = g.poll(1.0)
    assert command is not None and command.timed_out and command.twist is None
