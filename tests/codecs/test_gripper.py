"""Gripper conventions (raw labels, binarization at 0.5) and hysteresis."""

from __future__ import annotations

import pytest

from magma_ros.codecs import GRIPPER_THRESHOLD, CodecError, GripperHysteresis, binarize_gripper, gripper_label


def test_labels_are_the_raw_command_clipped_to_0_1() -> None:
    assert gripper_label(0.0) == 0.0 and gripper_label(1.0) == 1.0 and gripper_label(0.25) == 0.25
    assert gripper_label(3.0) == 1.0 and gripper_label(-0.5) == 0.0
    with pytest.raises(CodecError, match="finite"):
        gripper_label(float("nan"))


def test_binarization_is_strictly_above_one_half() -> None:
    assert GRIPPER_THRESHOLD == 0.5
    assert binarize_gripper(0.0) == 0.0                 # closed token's bin centre
    assert binarize_gripper(254 / 255) == 1.0           # open token's bin centre
    assert binarize_gripper(0.5) == 0.0 and binarize_gripper(0.502) == 1.0
    assert binarize_gripper(-0.99) == 0.0
    assert binarize_gripper(0.6, threshold=0.7) == 0.0
    with pytest.raises(CodecError, match="finite"):
        binarize_gripper(float("nan"))


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


def test_default_hysteresis_follows_decoded_closed_and_open_values() -> None:
    h = GripperHysteresis()
    assert h.update(0.0) == 0.0 and h.update(254 / 255) == 1.0 and h.update(0.5) == 1.0


def test_hysteresis_rejects_bad_thresholds() -> None:
    with pytest.raises(CodecError, match="below"):
        GripperHysteresis(0.4, 0.6)
    with pytest.raises(CodecError, match="below"):
        GripperHysteresis(0.5, 0.5)
    with pytest.raises(CodecError, match="finite"):
        GripperHysteresis(float("nan"), 0.2)
