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


def _row(dx: float = 0.0, dy: float = 0.0, dz: float = 1.0, yaw: float = 0.0, width: float = 8.0,
         command: int = 1) -> dict:
    return {"dx_cm": dx, "dy_cm": dy, "dz_cm": dz, "yaw_error_rad": yaw, "gripper_width_cm": width,
            "command_gripper": command}


def test_failure_modes_judge_the_best_close(recipe: dict) -> None:
    mode = recipe["failure_mode"]
    approach = [_row(dx=10 - i) for i in range(5)]
    assert mode(approach, True) == "success"
    assert mode(approach, False) == "never-closed"
    # two closes: 3 cm off, then 1 cm off and 4 cm high -> the nearer one decides: too high
    rows = [*approach, _row(dx=3, command=0), _row(dx=3), _row(dx=1, dz=4, command=0)]
    assert mode(rows, False) == "too-high"
    assert mode([*approach, _row(dx=1.2, dy=1.2, command=0)], False) == "off-centre"
    assert mode([*approach, _row(yaw=-0.5, command=0)], False) == "askew"
    shut_on_cube = [_row(command=0)] + [_row(width=w, command=0) for w in (7.5, 6.0, 5.5, 5.5, 5.5)]
    assert mode(approach + shut_on_cube, False) == "held"
    shut_on_nothing = [_row(command=0)] + [_row(width=w, command=0) for w in (6.0, 3.0, 0.5, 0.0, 0.0)]
    assert mode(approach + shut_on_nothing, False) == "slipped"
    reopened = [_row(command=0), _row(width=6.5, command=0), _row(width=7.5), _row(width=8.0), _row(), _row()]
    assert mode(approach + reopened, False) == "slipped"


def test_the_gripper_dwell_reaches_the_workcell(recipe: dict, tmp_path: Path) -> None:
    """--gripper-hold: every step's command is the node's hysteresis with that dwell over the model's answers."""
    from magma_ros.backends.default_checkpoint import shipped_checkpoint
    from magma_ros.codecs import GripperHysteresis

    args = [str(shipped_checkpoint()), "--task", "pick", "--seed", "5000", "--max-steps", "60"]
    commands: dict[int, list[int]] = {}
    for hold in (0, 12):
        out = tmp_path / f"hold{hold}"
        assert recipe["main"]([*args, "--gripper-hold", str(hold), "--out", str(out)]) == 0
        with (out / "pick_5000.csv").open() as f:
            rows = list(csv.DictReader(f))
        replay = GripperHysteresis(min_hold_steps=hold)
        assert [int(r["command_gripper"]) for r in rows] == [int(replay.update(int(r["model_gripper"])))
                                                            for r in rows]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["gripper_hold"] == hold and sum(summary["modes"].values()) == 1
        commands[hold] = [int(r["command_gripper"]) for r in rows]
    assert commands[0] != commands[12], "the model's gripper never changed twice within 12 steps: nothing was tested"


def test_near_cube_servo_gain_tells_a_centring_hand_from_one_that_ignores_the_offset(recipe: dict) -> None:
    servo = recipe["near_cube_servo"]
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(200):
        dx, dy = rng.uniform(-2.5, 2.5, 2)   # within 4 cm across
        rows.append({"dx_cm": dx, "dy_cm": dy, "dz_cm": rng.uniform(0, 5), "gripper_width_cm": 8.0,
                     "model_dx_mm": rng.normal(0, 2), "model_dy_mm": rng.normal(0, 2),   # ignores the offset
                     "expert_dx_mm": -3 * dx, "expert_dy_mm": -2 * dy + rng.normal(0, 0.1)})
    # far from the cube, shut, or too high: not counted (they would pull the slope either way)
    rows += [{**rows[0], "dx_cm": 9.0, "expert_dx_mm": 50.0}, {**rows[0], "dz_cm": 20.0, "expert_dx_mm": 50.0},
             {**rows[0], "gripper_width_cm": 5.5, "expert_dx_mm": 50.0}]
    result = servo(rows)
    assert result["rows"] == 200
    assert result["expert_gain_mm_per_cm"][0] == pytest.approx(-3.0, abs=1e-6)
    assert result["expert_gain_mm_per_cm"][1] == pytest.approx(-2.0, abs=0.05)
    assert result["expert_correlation"][0] == pytest.approx(-1.0, abs=1e-6) and result["expert_correlation"][1] < -0.99
    assert all(abs(g) < 0.5 for g in result["model_gain_mm_per_cm"])
    assert all(abs(c) < 0.2 for c in result["model_correlation"])
    assert servo(rows[:9]) is None                                   # too few steps near the cube to say
