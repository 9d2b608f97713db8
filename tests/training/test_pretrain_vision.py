"""The recipe's vision stage (training/recipes/pretrain_vision.py): its grasp-yaw labels and --init."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "pretrain_vision.py"


@pytest.fixture(scope="module")
def recipe() -> dict:
    return runpy.run_path(str(RECIPE))


def test_grasp_yaw_labels_say_how_far_the_hand_must_turn(recipe: dict, sim_dataset: Path) -> None:
    """Pick demos: the expert turns the hand to the cube's faces before it descends, so where the hand is
    low (under the 10 cm hover, gripper still open) the label for the target cube must say "aligned",
    and at the start (hand at home, yaw 0) it must equal the seed's cube yaw modulo a quarter turn."""
    from magma_ros.model import build_tiny_model, save_checkpoint
    from magma_ros.model.policy import MagmaPolicy
    from magma_ros.sim.config import SceneConfig
    from magma_ros.sim.scene import sample_layout
    from magma_ros.training.dataset import TrajectoryDataset
    from magma_ros.training.grounding import OBJECTS

    model, tokenizer = build_tiny_model("magma-tiny-sim256", seed=0)
    policy = MagmaPolicy.from_pretrained(save_checkpoint(model, tokenizer, sim_dataset.parent / "vision_probe"))
    _, _, _, states, yaws, _, episodes = recipe["load_frames"]([str(sim_dataset)], 1, 256, policy.image_processor)
    data = TrajectoryDataset(sim_dataset)
    cubes = [c for c in OBJECTS if c in SceneConfig().colors]
    assert yaws.shape == (len(states), len(cubes), 2)
    np.testing.assert_allclose(np.hypot(yaws[..., 0], yaws[..., 1]), 1.0, atol=1e-6)
    angle = np.arctan2(yaws[..., 0], yaws[..., 1]) / 4           # radians, in (-pi/4, pi/4]
    aligned_low = 0
    for episode_id in data.episode_ids:
        meta = data.episode_metadata(episode_id)
        rows = [i for i, e in enumerate(episodes) if e.endswith(f":{episode_id}")]
        target = cubes.index(meta["color"])
        layout = {c.color: c.yaw for c in sample_layout(SceneConfig(), int(meta["seed"]))}
        first = rows[0]
        for k, colour in enumerate(cubes):   # at home the TCP yaw is ~0: the label is the cube's own yaw
            turn = math.remainder(layout[colour] - data.states(episode_id)[0][5], math.pi / 2)
            assert angle[first, k] == pytest.approx(turn, abs=1e-5)
        home = states[rows[0], 0]   # the TCP height at home; hovering and descending go far below it
        low = [i for i in rows if states[i, 0] < home - 0.2 and states[i, 1] > 0.5]
        assert low, "the expert never descended with the gripper open"
        assert np.abs(angle[low, target]).max() < 0.06   # the expert descends within 0.05 rad of the faces
        aligned_low += len(low)
    assert aligned_low >= 4


def test_hand_to_cube_labels_close_to_zero_where_the_expert_grasps(recipe: dict, sim_dataset: Path) -> None:
    """The --offset-weight label is the TCP's recorded x-y minus each cube's starting centre: where a pick's
    expert closes the gripper (the recorded opening falls), the target cube's label must be within the
    expert's centring tolerance (8 mm, plus the fingers' travel while closing), and every other cube's
    label must be at least the cubes' minimum separation less that tolerance."""
    from magma_ros.model import build_tiny_model, save_checkpoint
    from magma_ros.model.policy import MagmaPolicy
    from magma_ros.sim.config import SceneConfig
    from magma_ros.training.dataset import TrajectoryDataset
    from magma_ros.training.grounding import OBJECTS

    model, tokenizer = build_tiny_model("magma-tiny-sim256", seed=0)
    policy = MagmaPolicy.from_pretrained(save_checkpoint(model, tokenizer, sim_dataset.parent / "offset_probe"))
    _, _, _, states, _, offsets, episodes = recipe["load_frames"]([str(sim_dataset)], 1, 256,
                                                                  policy.image_processor)
    data = TrajectoryDataset(sim_dataset)
    cubes = [c for c in OBJECTS if c in SceneConfig().colors]
    assert offsets.shape == (len(states), len(cubes), 2)
    grasps = 0
    for episode_id in data.episode_ids:
        meta = data.episode_metadata(episode_id)
        rows = [i for i, e in enumerate(episodes) if e.endswith(f":{episode_id}")]
        closing = [i for i in rows[1:] if states[i, 1] < 0.9 <= states[i - 1, 1]]
        if not closing:
            continue
        target = cubes.index(meta["color"])
        at = closing[0]
        assert np.linalg.norm(offsets[at, target]) < 0.012
        others = [k for k in range(len(cubes)) if k != target]
        assert np.linalg.norm(offsets[at, others], axis=-1).min() > SceneConfig().min_separation - 0.012
        grasps += 1
    assert grasps >= 1


def test_init_keeps_the_language_model_and_statistics(recipe: dict, sim_dataset: Path, tmp_path: Path,
                                                       one_torch_thread: None) -> None:
    from magma_ros.model import build_tiny_model, save_checkpoint

    model, tokenizer = build_tiny_model("magma-tiny-sim256", seed=3)
    stats = {"sim_panda": {"action": {"q01": [-0.01] * 6 + [0.0], "q99": [0.01] * 6 + [1.0],
                                      "mask": [True] * 6 + [False]}}}
    start = save_checkpoint(model, tokenizer, tmp_path / "start", dataset_statistics=stats)
    out = tmp_path / "out"
    assert recipe["main"]([str(sim_dataset), "--out", str(out), "--init", str(start), "--steps", "2",
                           "--batch-size", "4", "--every", "8", "--state-weight", "1", "--yaw-weight", "1",
                           "--offset-weight", "1"]) == 0
    before, after = load_file(str(Path(start) / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    lm = [k for k in before if "vision_tower" not in k and "multi_modal_projector" not in k]
    tower = [k for k in before if "vision_tower" in k]
    assert lm and all(np.array_equal(before[k], after[k]) for k in lm)          # the language model is kept
    assert any(not np.array_equal(before[k], after[k]) for k in tower)          # the tower trained
    assert (out / "dataset_statistics.json").read_text() == (Path(start) / "dataset_statistics.json").read_text()
