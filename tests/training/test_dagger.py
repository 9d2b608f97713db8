"""DAgger (training/recipes/dagger.py): episodes driven by a model (or the expert), labelled by the
expert from the states reached, appended to a real dataset that training reads."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "dagger.py"


@pytest.fixture(scope="module")
def recipe() -> dict:
    return runpy.run_path(str(RECIPE))


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    from magma_ros.training.dataset import DatasetWriter

    DatasetWriter(tmp_path / "data", "sim_panda", spec={"image": {"size": 256}})
    return tmp_path / "data"


def _checkpoint() -> str:
    from magma_ros.backends.default_checkpoint import shipped_checkpoint

    checkpoint = shipped_checkpoint()
    assert checkpoint is not None
    return str(checkpoint)


def test_expert_driven_labels_are_the_motion_a_recording_would_hold(recipe: dict, dataset: Path, capsys) -> None:
    from magma_ros.training.dataset import TrajectoryDataset

    # beta 1: the expert drives every step, so each label must be the motion the hand then made, which is
    # what a recording's label is (the dataset builder's pose deltas)
    assert recipe["main"]([_checkpoint(), "--data", str(dataset), "--task", "pick", "--seed", "4990",
                           "--episodes", "1", "--beta", "1"]) == 0
    assert "1 succeeded" in capsys.readouterr().out
    data = TrajectoryDataset(dataset)
    steps = list(data)
    assert len(steps) == data.episode_length("dagger-pick-4990") > 20
    meta = data.episode_metadata("dagger-pick-4990")["dagger"]
    assert meta["success"] and meta["expert_steps"] == len(steps) and meta["model_steps"] == 0
    assert all(s.image.shape == (256, 256, 3) and s.instruction == steps[0].instruction for s in steps)
    actions = np.stack([s.action for s in steps])
    states = np.stack([s.state for s in steps])
    assert set(actions[:, 6]) == {0.0, 1.0} and actions[0, 6] == 1.0   # it opens, then closes on the cube
    moved = states[1:, :3] - states[:-1, :3]
    moving = np.linalg.norm(actions[:-1, :3], axis=1) > 2e-3
    error = np.linalg.norm(moved[moving] - actions[:-1][moving, :3], axis=1)
    assert moving.sum() > 10 and np.median(error) < 1e-3       # metres per step: within a millimetre
    assert np.all(np.linalg.norm(actions[:, :3], axis=1) <= 0.25 * 0.1 + 1e-9)   # the expert's top speed
    statistics = json.loads((dataset / "dataset_statistics.json").read_text())["sim_panda"]["action"]
    assert statistics["q99"][0] <= actions[:, 0].max() + 1e-9     # recomputed over what was written


def test_the_model_drives_and_a_rerun_skips_finished_episodes(recipe: dict, dataset: Path, capsys) -> None:
    args = [_checkpoint(), "--data", str(dataset), "--task", "reach", "--seed", "4991", "--episodes", "1",
            "--beta", "0", "--max-steps", "12"]
    assert recipe["main"](args) == 0
    index = json.loads((dataset / "dataset.json").read_text())
    (entry,) = index["episodes"]
    assert entry["id"] == "dagger-reach-4991" and entry["metadata"]["dagger"]["model_steps"] == entry["steps"]
    assert recipe["main"](args) == 0
    assert len(json.loads((dataset / "dataset.json").read_text())["episodes"]) == 1
    assert capsys.readouterr().out.count("seed 4991:") == 1


def test_held_out_seeds_and_bad_beta_are_refused(recipe: dict, dataset: Path) -> None:
    for extra in (["--seed", "4999", "--episodes", "2"], ["--seed", "0", "--beta", "1.5"]):
        with pytest.raises(SystemExit) as err:
            recipe["main"](["x", "--data", str(dataset), *extra])
        assert err.value.code == 2


def _observation(ee: tuple[float, float, float], width: float, cube=(0.5, 0.0, 0.0275), yaw: float = 0.0):  # type: ignore[no-untyped-def]
    from magma_ros.sim.episode import Observation
    from magma_ros.sim.expert import TOOL_DOWN
    from magma_ros.sim.transforms import Pose, quat_from_rpy, quat_multiply
    from magma_ros.sim.workcell import JointState

    hand = Pose(np.array(ee), quat_multiply(quat_from_rpy(0.0, 0.0, yaw), TOOL_DOWN))
    joints = JointState((), np.zeros(0), np.zeros(0), np.zeros(0))
    return Observation(0, 0.0, "pick up the red cube", hand, width, joints, {"red": Pose(np.array(cube))})


def test_the_expert_descends_from_over_the_cube_and_retries_there(recipe: dict) -> None:
    from magma_ros.sim.expert import Phase, ScriptedExpert
    from magma_ros.sim.tasks import make_task

    def fresh():  # type: ignore[no-untyped-def]
        return recipe["FunnelExpert"](ScriptedExpert(make_task("pick", "red")))

    # 1.5 cm off and 4 cm above the cube, open and square: descend towards the cube, not back up to hover
    expert = fresh()
    action = expert(_observation((0.515, 0.0, 0.0675), 0.08))
    assert expert.phase is Phase.DESCEND and action.linear[2] < 0 and action.linear[0] < 0
    # the same spot but 3 cm across, or the fingers 0.5 rad off square: hover first, as the expert does
    for observation in (_observation((0.53, 0.0, 0.0675), 0.08), _observation((0.515, 0.0, 0.0675), 0.08, yaw=0.5)):
        expert = fresh()
        action = expert(observation)
        assert expert.phase is Phase.APPROACH and action.linear[2] > 0
    # lifting, but the model opened the fingers: nothing is held, so retry from where the hand is: down, open
    expert = fresh()
    expert.expert._enter(Phase.LIFT)
    action = expert(_observation((0.5, 0.0, 0.06), 0.08))
    assert expert.phase is Phase.DESCEND and action.gripper_width > 0.0 and action.linear[2] < 0
    # the same 3 cm across: back to the hover point
    expert = fresh()
    expert.expert._enter(Phase.LIFT)
    action = expert(_observation((0.53, 0.0, 0.06), 0.08))
    assert expert.phase is Phase.APPROACH and action.gripper_width > 0.0 and action.linear[2] > 0
    # shut on nothing at the bottom: open there, never "up fast" (the scripted expert's own retry)
    expert = fresh()
    expert.expert._enter(Phase.CLOSE)
    for _ in range(expert.expert.config.close_steps - 1):
        assert expert(_observation((0.5, 0.0, 0.04), 0.0)).gripper_width == 0.0
    action = expert(_observation((0.5, 0.0, 0.04), 0.0))
    assert expert.phase is Phase.DESCEND and action.gripper_width > 0.0 and np.allclose(action.linear, 0.0)
    # lifting with the cube between the fingers goes on lifting, closed
    expert = fresh()
    expert.expert._enter(Phase.LIFT)
    action = expert(_observation((0.5, 0.0, 0.06), 0.055))
    assert expert.phase is Phase.LIFT and action.gripper_width == 0.0 and action.linear[2] > 0


def test_runs_side_by_side_merge_into_one_dataset(recipe: dict, dataset: Path, tmp_path: Path, capsys) -> None:
    from magma_ros.training.records import DatasetError

    parts = [tmp_path / "part1", tmp_path / "part2"]   # missing: each run creates its own
    for seed, part in zip((4980, 4981), parts, strict=True):
        assert recipe["main"]([_checkpoint(), "--data", str(part), "--task", "reach", "--seed", str(seed),
                               "--episodes", "1", "--beta", "1", "--max-steps", "6"]) == 0
    assert recipe["main"](["--merge", *map(str, parts), "--data", str(dataset)]) == 0
    assert "2 episodes merged" in capsys.readouterr().out
    index = json.loads((dataset / "dataset.json").read_text())
    assert [e["id"] for e in index["episodes"]] == ["dagger-reach-4980", "dagger-reach-4981"]
    assert all((dataset / e["file"]).is_file() and e["steps"] == 6 for e in index["episodes"])
    assert "sim_panda" in json.loads((dataset / "dataset_statistics.json").read_text())
    with pytest.raises(DatasetError, match="already holds episode dagger-reach-4980"):
        recipe["merge"](dataset, parts[:1])
    # a built dataset's episodes of one task, under ids of their own (the recipe's final stage)
    assert recipe["merge"](dataset, parts, "pick") == 0
    assert recipe["main"](["--merge", str(parts[0]), "--only", "reach", "--id-prefix", "again_",
                           "--data", str(dataset)]) == 0
    index = json.loads((dataset / "dataset.json").read_text())
    assert [e["id"] for e in index["episodes"]] == ["dagger-reach-4980", "dagger-reach-4981", "again_dagger-reach-4980"]
    copied = index["episodes"][-1]
    assert copied["file"].endswith("again_dagger-reach-4980.parquet") and (dataset / copied["file"]).is_file()
    assert (dataset / copied["file"]).read_bytes() == (dataset / index["episodes"][0]["file"]).read_bytes()
