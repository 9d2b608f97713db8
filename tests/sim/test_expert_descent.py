"""The scripted expert's last centimetres before a grasp are slow, so recordings show them densely.

At full speed the hand dropped about 2 cm per control step there; a recording then held no frame
between "well above the cube: descend" and "low: close", and a policy trained on it closed halfway
(training/recipes/README.md, attempt 10). Every descent step inside ``slow_height`` must stay under
``slow_speed``, and the band between ``close_height`` and ``slow_height`` must be seen step by step.
"""

import numpy as np
import pytest

from magma_ros.sim import ExpertConfig, ScriptedExpert, Workcell, run_episode, task_for_seed
from magma_ros.sim.episode import EpisodeConfig
from magma_ros.sim.expert import Phase

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
