import inspect
import math

import numpy as np
import pytest

from magma_ros.sim import (
    Action,
    EpisodeConfig,
    ScriptedExpert,
    TaskError,
    TaskFamily,
    make_task,
    run_episode,
    task_for_seed,
)
from magma_ros.sim.expert import grasp_yaw
from magma_ros.sim.tasks import SuccessTracker


def test_instructions_and_budgets():
    assert make_task("reach", "red").instruction == "reach the red cube"
    assert make_task(TaskFamily.PICK, "blue").instruction == "pick up the blue cube"
    assert [task_for_seed("pick", s).color for s in range(4)] == ["red", "green", "blue", "red"]
    with pytest.raises(TaskError, match="unknown task family"):
        make_task("push", "red")
    with pytest.raises(TaskError, match="colour"):
        make_task("reach", "purple")
    with pytest.raises(TaskError, match="max_steps"):
        make_task("reach", "red", max_steps=0)


def test_reach_success_is_measured_5_cm_above_the_cube(cell):
    tracker = SuccessTracker(make_task("reach", "green"))
    cube = cell.cube_pose("green").position
    assert tracker.reach_error(cell) == pytest.approx(np.linalg.norm(cell.ee_pose().position - cube - [0, 0, 0.05]))
    assert not tracker.update(cell)


def test_pick_needs_a_lift_not_just_a_touch(cell):
    tracker = SuccessTracker(make_task("pick", "red"))
    for _ in range(10):
        assert not tracker.update(cell)
    assert tracker.lift(cell) == pytest.approx(0.0, abs=1e-3)


def test_grasp_yaw_picks_the_nearest_face():
    assert grasp_yaw(0.1, 0.0) == pytest.approx(0.1)
    assert grasp_yaw(0.1, 1.5) == pytest.approx(0.1 + math.pi / 2)
    assert grasp_yaw(-0.7, 3.0) == pytest.approx(-0.7 + math.pi)


def test_idle_policy_fails_within_the_budget(cell):
    task = make_task("reach", "red", max_steps=5)
    result = run_episode(task, 0, lambda obs: Action.create([0, 0, 0], [0, 0, 0], 0.08), workcell=cell)
    assert not result.success and result.steps == 5
    assert result.trajectory.actions.shape == (5, 7) and result.trajectory.joint_positions.shape == (5, 9)


def test_episode_runner_renders_for_camera_policies(cell):
    seen = []

    def policy(observation):
        seen.append(observation)
        return Action.create([0, 0, 0], [0, 0, 0], 0.08)

    run_episode(make_task("pick", "red"), 1, policy, max_steps=2, workcell=cell, config=EpisodeConfig(render=True))
    assert set(seen[0].images) == {"third_person", "wrist"}
    assert seen[0].instruction == "pick up the red cube"
    assert seen[1].sim_time == pytest.approx(0.1)


@pytest.mark.parametrize("family", ["reach", "pick"])
def test_expert_episode_is_deterministic(family):
    task = task_for_seed(family, 4)
    first = run_episode(task, 4, ScriptedExpert(task))
    second = run_episode(task, 4, ScriptedExpert(task))
    assert first.success and second.success and first.steps == second.steps
    np.testing.assert_array_equal(first.trajectory.joint_positions, second.trajectory.joint_positions)
    np.testing.assert_array_equal(first.trajectory.actions, second.trajectory.actions)


def test_expert_retries_when_the_fingers_close_on_nothing(cell):
    from magma_ros.sim.episode import observe
    from magma_ros.sim.expert import Phase

    expert = ScriptedExpert(make_task("pick", "red"))
    expert.phase = Phase.CLOSE
    cell.command_gripper(0.0)
    cell.step(1.0)  # fingers shut on air
    action = None
    for _ in range(expert.config.close_steps):
        action = expert(observe(cell, 0, "pick up the red cube"))
    assert expert.phase is Phase.APPROACH and expert.attempts == 2
    assert action.gripper_width == expert.config.open_width and action.linear[2] > 0


def test_expert_lifts_slowly_so_a_grasp_is_not_torn_from_settling_fingers():
    # Every action of the lift phase moves the hand at most lift_speed; the approach still flies at
    # max_speed. A policy imitating it then cannot mistake the first lift step for a full-speed jump
    # while the fingers are still closing (what the attempt-7 model did: close and rise 25 mm at once).
    from magma_ros.sim.expert import ExpertConfig, Phase

    task = task_for_seed("pick", 3)
    expert = ScriptedExpert(task)
    speeds: dict[Phase, list[float]] = {phase: [] for phase in Phase}

    def policy(observation):
        action = expert(observation)
        speeds[expert.phase].append(float(np.linalg.norm(action.linear)))
        return action

    result = run_episode(task, 3, policy)
    assert result.success
    config = ExpertConfig()
    assert speeds[Phase.LIFT], "the episode never lifted"
    assert max(speeds[Phase.LIFT]) <= config.lift_speed + 1e-9
    assert max(speeds[Phase.APPROACH]) == pytest.approx(config.max_speed)
    with pytest.raises(TaskError, match="lift_speed"):
        ExpertConfig(lift_speed=0.0)


@pytest.mark.parametrize("quiet_height", [None, 0.015])
def test_a_shaken_expert_is_noisy_only_on_its_way_to_the_cube_and_still_succeeds(quiet_height):
    # None: the default quiet zone (the last 4 cm above the cube exact); 0.015: the final approach shaken too
    from magma_ros.sim.expert import PerturbedExpert, Phase

    task = task_for_seed("pick", 7)
    quiet_below = 0.04 if quiet_height is None else quiet_height

    def run(std: float, seed: int):
        expert = (PerturbedExpert(ScriptedExpert(task), std, seed) if quiet_height is None
                  else PerturbedExpert(ScriptedExpert(task), std, seed, quiet_height))
        twists: list[tuple[Phase, np.ndarray, np.ndarray]] = []

        def policy(observation):
            exact = expert.expert.__class__(task)           # what an unshaken expert would answer here ...
            exact.phase, exact._phase_steps = expert.expert.phase, expert.expert._phase_steps
            exact._yaw, exact._lift_from = expert.expert._yaw, expert.expert._lift_from
            reference = exact(observation)                   # ... from the same internal state
            action = expert(observation)
            height = observation.ee_pose.position[2] - observation.cube_poses[task.color].position[2]
            twists.append((expert.phase, action.linear - reference.linear, action.angular - reference.angular,
                           height))
            return action

        return run_episode(task, 7, policy), twists

    result, twists = run(0.05, seed=7)
    assert result.success
    moving = [(d, h) for phase, d, _, h in twists if phase in (Phase.APPROACH, Phase.DESCEND)]
    exact = [d for phase, d, _, _ in twists if phase in (Phase.CLOSE, Phase.LIFT)]
    assert exact and all(np.array_equal(d, np.zeros(3)) for d in exact)       # grasp and lift are untouched
    assert all(np.array_equal(w, np.zeros(3)) for _, _, w, _ in twists)      # so is every rotation
    noisy = [d for d, height in moving if height >= quiet_below]
    quiet = [d for d, height in moving if height < quiet_below]               # the last cm above the cube
    assert all(np.array_equal(d, np.zeros(3)) for d in quiet)
    assert quiet or quiet_height is not None                                  # 4 cm of descent: steps in it
    assert any(height < 0.04 for d, height in moving if height >= quiet_below) == (quiet_height is not None)
    spread = np.std(np.concatenate(noisy))
    assert 0.03 < spread < 0.07 and all(np.any(d != 0) for d in noisy)
    again, twists_again = run(0.05, seed=7)                                    # seeded: the same episode
    assert again.steps == result.steps and all(np.array_equal(a[1], b[1]) for a, b in zip(twists, twists_again,
                                                                                          strict=True))
    _, other = run(0.05, seed=8)
    assert not np.array_equal(other[0][1], twists[0][1])
    with pytest.raises(TaskError, match="perturbation std"):
        PerturbedExpert(ScriptedExpert(task), float("nan"), 0)


def test_the_teleop_contract_bounds_the_shake():
    from magma_ros.contract import PARAMETER_CLASSES, ContractError, ExpertTeleopParameters

    assert PARAMETER_CLASSES["expert_teleop"] is ExpertTeleopParameters
    assert ExpertTeleopParameters().perturb_std == 0.0
    for bad in (-0.01, 0.3, float("inf")):
        with pytest.raises(ContractError, match="perturb_std"):
            ExpertTeleopParameters(perturb_std=bad)
    # the quiet zone's default is PerturbedExpert's (the contract does not import the simulator)
    from magma_ros.sim.expert import PerturbedExpert

    default = inspect.signature(PerturbedExpert).parameters["quiet_height"].default
    assert ExpertTeleopParameters().perturb_quiet_height == default == 0.04
    assert ExpertTeleopParameters(perturb_quiet_height=0.0).perturb_quiet_height == 0.0
    for bad in (-0.001, 0.51, float("nan")):
        with pytest.raises(ContractError, match="perturb_quiet_height"):
            ExpertTeleopParameters(perturb_quiet_height=bad)


def test_the_expert_closes_once_the_hand_is_low_over_the_cube():
    # the close rule: centred within position_tolerance, below close_height over the grasp point, fingers square
    from magma_ros.sim.expert import ExpertConfig, Phase

    task = task_for_seed("pick", 11)
    expert = ScriptedExpert(task)
    heights: list[float] = []

    def policy(observation):
        phase = expert.phase
        action = expert(observation)
        if phase is Phase.DESCEND and expert.phase is Phase.CLOSE:
            cube = observation.cube_poses[task.color].position
            heights.append(float(observation.ee_pose.position[2] - cube[2]))
        return action

    assert run_episode(task, 11, policy).success
    assert len(heights) == 1 and 0.0 < heights[0] < ExpertConfig().close_height


@pytest.mark.parametrize("seed", [3, 7, 11])
def test_a_misjudging_expert_hovers_off_the_cube_then_recentres_on_the_way_down(seed):
    """--aim-error: the hover is off by [error/2, error] across the table; from the first descent step on,
    every twist is the exact expert's answer to the state, so the recording shows a clean correction."""
    from magma_ros.sim.expert import MisjudgingExpert, Phase

    task = task_for_seed("pick", seed)
    error = 0.02
    expert = MisjudgingExpert(ScriptedExpert(task), error, seed)
    rows = []

    def policy(observation):
        exact = ScriptedExpert(task)                       # the exact expert from the same internal state
        exact.phase, exact._phase_steps = expert.expert.phase, expert.expert._phase_steps
        exact._yaw, exact._lift_from = expert.expert._yaw, expert.expert._lift_from
        reference = exact(observation)
        phase = expert.phase
        action = expert(observation)
        cube = observation.cube_poses[task.color].position
        offset = float(np.hypot(*(observation.ee_pose.position - cube)[:2]))
        rows.append((phase, offset, np.array_equal(action.linear, reference.linear)))
        return action

    result = run_episode(task, seed, policy)
    assert result.success
    length = float(np.hypot(*expert.error[:2]))
    assert error / 2 <= length <= error and expert.error[2] == 0.0
    first_descent = next(i for i, row in enumerate(rows) if row[0] is Phase.DESCEND)
    assert abs(rows[first_descent][1] - length) < 0.01                  # it hovered off the cube by the error
    assert all(same for phase, _, same in rows[first_descent:])         # then acts exactly as the expert does
    closing = next(i for i, row in enumerate(rows) if row[0] is Phase.CLOSE)
    assert rows[closing][1] < 0.008                                      # ... and closes centred
    assert not any(same for phase, _, same in rows[:first_descent] if phase is Phase.APPROACH)
    # reach is untouched; bad errors are refused; the contract's bound is the expert's
    reach = task_for_seed("reach", seed)
    plain, misjudging = ScriptedExpert(reach), MisjudgingExpert(ScriptedExpert(reach), error, seed)
    assert run_episode(reach, seed, plain).steps == run_episode(reach, seed, misjudging).steps
    from magma_ros.contract import AIM_ERROR_MAX, ContractError, ExpertTeleopParameters
    from magma_ros.sim.expert import AIM_ERROR_MAX as SIM_MAX

    assert AIM_ERROR_MAX == SIM_MAX and ExpertTeleopParameters().aim_error == 0.0
    for bad in (-0.001, SIM_MAX + 0.001, float("nan")):
        with pytest.raises(TaskError, match="aim error"):
            MisjudgingExpert(ScriptedExpert(task), bad, seed)
        with pytest.raises(ContractError, match="aim_error"):
            ExpertTeleopParameters(aim_error=bad)
