"""Gripper conventions (raw labels, binarization at 0.5) and hysteresis."""

from __future__ import annotations

import numpy as np
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


def test_dwell_keeps_a_changed_state_for_min_hold_steps_updates() -> None:
    h = GripperHysteresis(min_hold_steps=3)
    # close, then three updates that say "open" are ignored; the fourth opens (and starts a new dwell)
    sequence = [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    expected = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    got = []
    for value in sequence:
        got.append(h.update(value))
    assert got == expected
    # an update that does not change the state starts no dwell
    h = GripperHysteresis(min_hold_steps=2)
    assert [h.update(v) for v in (1.0, 1.0, 0.0, 1.0, 1.0, 1.0)] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_dwell_counts_every_update_and_ends_on_release_or_reset() -> None:
    h = GripperHysteresis(min_hold_steps=2)
    assert h.update(0.0) == 0.0 and h.holding
    assert h.update(float("nan")) == 0.0 and h.update(float("inf")) == 0.0   # non-finite updates count too
    assert not h.holding and h.update(1.0) == 1.0
    assert h.update(0.0) == 1.0 and h.holding   # inside the dwell of the opening
    h.release()
    assert not h.holding and h.is_open and h.update(0.0) == 0.0   # release keeps the state, ends the dwell
    h.reset()
    assert not h.holding and h.is_open and h.update(0.0) == 0.0


def test_zero_dwell_is_the_plain_hysteresis() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-0.2, 1.2, size=500)
    plain, dwell0 = GripperHysteresis(), GripperHysteresis(min_hold_steps=0)
    assert [plain.update(v) for v in values] == [dwell0.update(v) for v in values]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_dwell_rejects_bad_lengths(bad: object) -> None:
    with pytest.raises(CodecError, match="min_hold_steps"):
        GripperHysteresis(min_hold_steps=bad)  # type: ignore[arg-type]
