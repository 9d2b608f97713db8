"""The closed-loop diagnostic (training/recipes/closed_loop_trace.py): the shipped default driving a reach
episode, every step written, and the numbers it prints being the workcell's."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "closed_loop_trace.py"


@pytest.fixture(scope="module")
def recipe() -> dict:
    return runpy.run_path(str(RECIPE))


def test_the_default_reaches_and_every_step_is_traced(recipe: dict, tmp_path: Path, capsys) -> None:
    from magma_ros.backends.default_checkpoint import shipped_checkpoint
    from magma_ros.sim.tasks import SuccessCriteria

    checkpoint = shipped_checkpoint()
    assert checkpoint is not None
    assert recipe["main"]([str(checkpoint), "--task", "reach", "--seed", "5000", "--max-steps", "40",
                           "--out", str(tmp_path), "--verbose"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    (episode,) = summary["episodes"]
    assert episode["seed"] == 5000 and episode["success"] and summary["successes"] == 1   # README: 23 steps
    with (tmp_path / "reach_5000.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == episode["steps"] and [int(r["step"]) for r in rows] == list(range(len(rows)))
    offsets = np.array([[float(r["dx_cm"]), float(r["dy_cm"]), float(r["dz_cm"])] for r in rows])
    target = np.array([0.0, 0.0, SuccessCriteria().reach_height * 100])
    # it starts far from the point above the cube and its last recorded step is close to it
    assert np.linalg.norm(offsets[0] - target) > 20 and np.linalg.norm(offsets[-1] - target) < 6
    assert all(r["model_gripper"] in ("0", "1") for r in rows)
    assert all(r["expert_phase"] == "approach" for r in rows)   # reach: the expert only ever approaches
    printed = capsys.readouterr().out
    assert printed.count("5000 k") == len(rows) and "reach: 1/1 successes" in printed


def test_gripper_closes_are_counted_from_open_to_closed(recipe: dict) -> None:
    rows = [{"model_gripper": g} for g in (1, 0, 0, 1, -1, 0, 1, 0)]
    assert recipe["closes"](rows) == 3      # -1 (no usable answer) keeps the previous command
    assert recipe["closes"]([{"model_gripper": 0}]) == 1   # the gripper starts open
    assert recipe["closes"]([]) == 0


def test_a_missing_checkpoint_is_a_clear_error(recipe: dict, tmp_path: Path, capsys) -> None:
    assert recipe["main"]([str(tmp_path / "nope"), "--task", "reach"]) == 2
    assert "closed_loop_trace:" in capsys.readouterr().err
