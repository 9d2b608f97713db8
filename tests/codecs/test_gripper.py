"""Gripper mapping and hysteresis."""

from __future__ import annotations

import pytest

from magma_ros.codecs import CodecError, GripperHysteresis, gripper_from_normalized, gripper_to_normalized


def test_mapping_is_affine_1_open() -> None:
    assert gripper_from_normalized(-1.0) == 0.0
    assert gripper_from_normalized(1.0) == 1.0
    assert gripper_from_normalized(0.0) == 0.5
    assert gripper_from_normalized(3.0) == 1.0
    assert gripper_to_normalized(1.0) == 1.0 and gripper_to_normalized(0.25) == -0.5


def test_binarization_is_strictly_above_threshold() -> None:
    assert gripper_from_normalized(0.0, binarize=True) == 0.0
    assert gripper_from_normalized(0.02, binarize=True) == 1.0
    assert gripper_from_normalized(0.2, binarize=True, threshold=0.7) == 0.0
    with pytest.raises(CodecError):
        gripper_from_normalized(float("nan"))


def test_hysteresis_holds_state_between_thresholds() -> None:
    h = GripperHysteresis(open_threshold=0.7, close_threshold=0.3)
    assert h.is_open
    # Between the thresholds nothing changes; crossing one switches; NaN holds.
    sequence = [0.5, 0.31, 0.3, 0.5, 0.69, float("nan"), 0.7, 0.4, 0.2, 0.9]
    expected = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert [h.update(v) for v in sequence] == expected
    h.update(0.0)
    h.reset()
    assert h.is_open
    h.reset(initial_open=False)
    assert not h.is_open and h.update(0.5) == 0.0


def test_hysteresis_rejects_bad_thresholds() -> None:
    with pytest.raises(CodecError, match="below"):
        GripperHysteresis(0.4, 0.6)
    with pytest.raises(CodecError, match="below"):
        GripperHysteresis(0.5, 0.5)
    with pytest.raises(CodecError, match="finite"):
        GripperHysteresis(float("nan"), 0.2)
