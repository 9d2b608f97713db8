"""training/recipes/offset_probe.py: which frames count as "near the cube" (attempt 12's probes)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "offset_probe.py"


@pytest.fixture(scope="module")
def probe() -> dict:
    return runpy.run_path(str(RECIPE))


def _state(x: float, y: float, z: float, gripper: float) -> np.ndarray:
    return np.array([x, y, z, 0.0, 0.0, 0.0, gripper])


def test_near_cube_frames_are_open_low_and_close_across(probe: dict) -> None:
    near = probe["near_cube_offset"]
    cube, size = (0.5, 0.1), 0.055                            # centre 2.75 cm above the table
    assert near(_state(0.51, 0.09, 0.05, 1.0), cube, size) == pytest.approx((1.0, -1.0))
    assert near(_state(0.51, 0.09, 0.05, 0.0), cube, size) is None            # gripper shut: not a grasp to win
    assert near(_state(0.51, 0.09, 0.0275 + 0.0601, 1.0), cube, size) is None  # 6 cm above the centre or more
    assert near(_state(0.5 + 0.0401, 0.1, 0.05, 1.0), cube, size) is None     # 4 cm across or more
    assert near(_state(0.5 + 0.0399, 0.1, 0.0275 + 0.0599, 1.0), cube, size) == pytest.approx((3.99, 0.0))


def test_the_crops_lie_inside_the_policy_frame(probe: dict) -> None:
    frame = np.zeros((256, 256, 3))
    for rows, cols in probe["CROPS"].values():
        assert frame[rows, cols].shape[:2] == (rows.stop - rows.start, cols.stop - cols.start)


def test_servo_fit_recovers_a_known_gain_and_reads_zero_for_a_blind_model(probe: dict) -> None:
    rng = np.random.default_rng(0)
    offset = rng.uniform(-2.0, 2.0, (200, 2))
    label = -3.5 * offset                                          # the expert: 3.5 mm back per cm off
    blind = rng.normal(0.0, 1.0, (200, 2))                         # a model that ignores the offset
    half = -1.75 * offset + rng.normal(0.0, 0.1, (200, 2))         # one that corrects half as much
    fit = probe["servo_fit"](offset, label, blind)
    assert fit["label_slope"] == pytest.approx([-3.5, -3.5]) and fit["label_corr"] == pytest.approx([-1.0, -1.0])
    assert all(abs(s) < 0.3 for s in fit["model_slope"]) and all(abs(c) < 0.2 for c in fit["model_vs_label"])
    fit = probe["servo_fit"](offset, label, half)
    assert fit["model_slope"] == pytest.approx([-1.75, -1.75], abs=0.05) and min(fit["model_vs_label"]) > 0.99
    flat = probe["servo_fit"](np.zeros((5, 2)), label[:5], half[:5])   # no spread of offsets: no slope to read
    assert all(np.isnan(v) for v in flat["model_slope"])
