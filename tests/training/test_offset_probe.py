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
