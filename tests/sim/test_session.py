"""Episode bookkeeping: tasks, steps, success, and a clock that never goes back."""

from __future__ import annotations

import pytest

from magma_ros.sim import ScriptedExpert, TaskError, run_episode
from magma_ros.sim.session import CLOCK_START_S, EPISODE_GAP_S, EpisodeSession, EpisodeStatus, choose_task


def test_choose_task_cycles_colours_with_the_seed_unless_one_is_given():
    assert [choose_task("reach", s).color for s in range(4)] == ["red", "green", "blue", "red"]
    assert choose_task("pick", 1, "blue").color == "blue"
    assert choose_task("pick", 1).max_steps == 150 and choose_task("pick", 1, max_steps=7).max_steps == 7
    with pytest.raises(TaskError):
        choose_task("stack", 0)


def test_clock_is_monotonic_across_resets(cell):
    session = EpisodeSession(cell, control_period=0.1)
    first = session.reset(choose_task("reach", 0), 0)
    assert first.start_time == CLOCK_START_S and first.episode == 0 and first.step == 0
    cell.step(0.5)
    end_of_first = session.clock()
    second = session.reset(choose_task("reach", 1), 1)
    assert second.episode == 1 and cell.sim_time == 0.0
    assert second.start_time == pytest.approx(end_of_first + EPISODE_GAP_S)
    assert session.to_cell_time(second.start_time + 0.25) == pytest.approx(0.25)


def test_steps_and_success_match_the_episode_runner(cell):
    """Stepping the expert by hand through the session ends exactly where run_episode does."""
    task = choose_task("reach", 2)
    reference = run_episode(task, 2, ScriptedExpert(task), workcell=cell)
    session = EpisodeSession(cell, control_period=0.1)
    session.reset(task, 2)
    expert = ScriptedExpert(task)
    from magma_ros.sim import observe

    status = session.status()
    while not status.done:
        action = expert(observe(cell, status.step, task.instruction))
        cell.command_twist(action.linear, action.angular, stamp=cell.sim_time, frame_id=cell.base_frame)
        cell.command_gripper(action.gripper_width)
        cell.step(0.1)
        status = session.control_step_done()
    assert (status.success, status.step) == (reference.success, reference.steps)
    assert session.control_step_done() == status  # nothing counts after the end


def test_status_round_trips_through_json(cell):
    session = EpisodeSession(cell, control_period=0.1)
    status = session.reset(choose_task("pick", 4), 4)
    assert EpisodeStatus.from_json(status.to_json()) == status
    with pytest.raises(TaskError):
        EpisodeStatus.from_json("{}")
    with pytest.raises(TaskError):
        EpisodeSession(cell, control_period=0.0)
