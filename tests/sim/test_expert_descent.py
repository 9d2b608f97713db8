"""The scripted expert's pick: the last centimetres before a grasp are slow, so recordings show them
densely; ``yaw_slack`` lets it keep a heading that is close enough to square with the cube.

At full speed the hand dropped about 2 cm per control step there; a recording then held no frame
between "well above the cube: descend" and "low: close", and a policy trained on it closed halfway
(training/recipes/README.md, attempt 10). Every descent step inside ``slow_height`` must stay under
``slow_speed``, and the band between ``close_height`` and ``slow_height`` must be seen step by step.
"""

import math

import numpy as np
import pytest

from magma_ros.sim import ExpertConfig, ScriptedExpert, Workcell, run_episode, task_for_seed
from magma_ros.sim.episode import EpisodeConfig
from magma_ros.sim.expert import Phase, grasp_yaw
from magma_ros.sim.transforms import yaw_of

SEEDS = range(1000, 1008)


@pytest.mark.parametrize("seed", SEEDS)
def test_final_descent_is_slow_and_densely_sampled(seed):
    config = ExpertConfig()
    period = EpisodeConfig().control_period
    task = task_for_seed("pick", seed)
    expert = ScriptedExpert(task, config)
    heights: list[float] = []  # hand above the cube's centre at each descend step inside the slow zone
    commands: list[float] = []  # commanded speed at those steps
    closing_heights: list[float] = []

    def observe(observation, action):
        cube = observation.cube_poses[task.color].position
        height = float(observation.ee_pose.position[2] - cube[2])
        if expert.phase is Phase.DESCEND and height < config.slow_height:
            heights.append(height)
            commands.append(float(np.linalg.norm(action.linear)))
        if expert.phase is Phase.CLOSE and not closing_heights:
            closing_heights.append(height)

    with Workcell() as cell:
        result = run_episode(task, seed, expert, workcell=cell, observer=observe)
    assert result.success, f"seed {seed}: the expert failed"
    assert closing_heights and closing_heights[0] <= config.close_height + 1e-3
    assert all(speed <= config.slow_speed + 1e-9 for speed in commands), commands
    # from slow_height down to close_height at slow_speed: one frame at least every slow_speed * period
    band = [h for h in heights if h > config.close_height]
    assert len(band) >= int((config.slow_height - 0.02 - config.close_height) / (config.slow_speed * period)), heights
    gaps = np.diff(sorted([*heights, closing_heights[0]]))
    assert gaps.max() <= config.slow_speed * period * 1.5, f"a descent step of {gaps.max() * 100:.1f} cm"


def test_slow_zone_must_be_positive():
    with pytest.raises(Exception, match="slow_speed"):
        ExpertConfig(slow_speed=0.0)


def _off_square(cell: Workcell, color: str) -> float:
    heading = yaw_of(cell.ee_pose().orientation)
    return abs(math.remainder(heading - grasp_yaw(yaw_of(cell.cube_pose(color).orientation), heading), 2 * math.pi))


@pytest.mark.parametrize("slack", [0.0, 0.45])
def test_yaw_slack_turns_only_as_far_as_needed(slack):
    """With slack the expert keeps a heading within ``slack`` of square and turns the rest; it still picks."""
    config = ExpertConfig(yaw_slack=slack)
    kept, turned = 0, 0
    with Workcell() as cell:
        for seed in range(1000, 1012):
            task = task_for_seed("pick", seed)
            cell.reset(seed)
            start = _off_square(cell, task.color)
            expert = ScriptedExpert(task, config)
            turns: list[float] = []
            at_close: list[float] = []

            def observe(observation, action, expert=expert, turns=turns, at_close=at_close, task=task, cell=cell):
                turns.append(abs(float(action.angular[2])))
                if expert.phase is Phase.CLOSE and not at_close:
                    at_close.append(_off_square(cell, task.color))

            result = run_episode(task, seed, expert, workcell=cell, observer=observe)
            assert result.success, f"seed {seed} (start {start:.2f} rad off square, slack {slack})"
            assert at_close[0] <= max(slack, config.yaw_tolerance) + 0.03, (seed, start, at_close)
            if start < slack - 0.05:   # close enough from the start: it never turns
                kept += 1
                assert max(turns) < 0.05, (seed, start, max(turns))
            elif start > slack + 0.05:   # too far: it turns, down to the edge of the slack, not to square
                turned += 1
                assert at_close[0] >= slack - 0.1, (seed, start, at_close)
    assert turned > 0 and (kept > 0 or slack == 0.0)


def test_yaw_slack_is_at_most_a_quarter_of_a_half_turn():
    with pytest.raises(Exception, match="yaw_slack"):
        ExpertConfig(yaw_slack=1.0)


@pytest.mark.parametrize("close_steps", [5, 10])
def test_close_steps_hold_still_before_the_lift(close_steps):
    """From the close command the hand stays put, the gripper commanded shut, for close_steps steps; then it lifts."""
    task = task_for_seed("pick", 1003)
    expert = ScriptedExpert(task, ExpertConfig(close_steps=close_steps))
    phases: list[tuple[Phase, float, float]] = []

    def observe(observation, action):
        phases.append((expert.phase, float(np.linalg.norm(action.linear)), action.gripper_width))

    with Workcell() as cell:
        result = run_episode(task, 1003, expert, workcell=cell, observer=observe)
    assert result.success
    first = next(i for i, (phase, _, _) in enumerate(phases) if phase is Phase.CLOSE)
    moving = next(i for i in range(first, len(phases)) if phases[i][1] > 0.0)
    assert close_steps <= moving - first <= close_steps + 1, phases[first:moving + 1]
    assert all(width == 0.0 for _, _, width in phases[first:moving + 1])
    assert phases[moving][0] is Phase.LIFT


def test_expert_teleop_defaults_are_the_experts():
    """The ROS node's expert options default to ExpertConfig's, so record-demos and the ROS-free expert agree."""
    from magma_ros.contract import ExpertTeleopParameters

    fields = ExpertTeleopParameters().expert_config_fields()
    defaults = ExpertConfig()
    assert fields == {name: getattr(defaults, name) for name in fields}
