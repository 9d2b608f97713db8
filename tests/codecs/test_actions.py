"""ActionCodec: token layout, round trips, clipping, hand-computed decodes, lenient decode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.codecs import (
    BRIDGE_ORIG,
    GOOGLE_ROBOT,
    ActionCodec,
    ActionStatistics,
    CodecError,
)

CODEC = ActionCodec(128000)
STATS = [BRIDGE_ORIG, GOOGLE_ROBOT]


def test_token_range_is_the_256_reserved_base_vocab_ids() -> None:
    assert CODEC.token_range == (127744, 127999)
    assert CODEC.token_range.size == 256
    assert CODEC.bin_edges.shape == (256,) and CODEC.bin_centres.shape == (255,)
    assert CODEC.bin_width == pytest.approx(2 / 255)
    # The tiny model's codec: same layout under a small base vocabulary.
    assert ActionCodec(1000).token_range == (744, 999)


def test_bin_d_is_token_base_minus_1_minus_d() -> None:
    # The left edge of bin d belongs to bin d, so it encodes to 127999 - d.
    tokens = CODEC.normalized_to_tokens(CODEC.bin_edges[:-1])
    np.testing.assert_array_equal(tokens, 127999 - np.arange(255))
    np.testing.assert_array_equal(CODEC.normalized_to_tokens([-1.0, 1.0]), [127999, 127745])
    np.testing.assert_array_equal(CODEC.tokens_to_normalized(127999 - np.arange(255)), CODEC.bin_centres)


def _action_strategy(stats: ActionStatistics) -> st.SearchStrategy[list[float]]:
    dims = [st.floats(lo, hi, allow_nan=False) for lo, hi in zip(stats.q01[:6], stats.q99[:6], strict=True)]
    return st.tuples(*dims, st.floats(0.0, 1.0)).map(list)


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
@settings(deadline=None, max_examples=300)
@given(data=st.data())
def test_decode_encode_is_within_half_a_bin(stats: ActionStatistics, data: st.DataObject) -> None:
    action = np.array(data.draw(_action_strategy(stats)))
    decoded = CODEC.decode(CODEC.encode(action, stats), stats)
    assert decoded.valid, decoded.error
    # Half a bin is 1/255 in normalized units; dims 0..5 scale by (q99 - q01) / 2, the gripper by 1/2.
    span = np.array([*np.subtract(stats.q99[:6], stats.q01[:6]), 1.0])
    tolerance = 0.5 * CODEC.bin_width * 0.5 * span + 1e-12
    assert np.all(np.abs(decoded.action - action) <= tolerance)
    assert np.all(np.abs(decoded.normalized - CODEC.normalize(action, stats)) <= 0.5 * CODEC.bin_width + 1e-12)


@settings(deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_any_finite_value_encodes_inside_the_range(values: list[float]) -> None:
    tokens = CODEC.normalized_to_tokens(values)
    assert np.all((tokens >= 127745) & (tokens <= 127999))


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
def test_actions_outside_q01_q99_clip_to_the_end_bins(stats: ActionStatistics) -> None:
    above = np.array([*(q + 10.0 for q in stats.q99[:6]), 5.0])
    below = np.array([*(q - 10.0 for q in stats.q01[:6]), -5.0])
    np.testing.assert_array_equal(CODEC.encode(above, stats), [127745] * 7)
    np.testing.assert_array_equal(CODEC.encode(below, stats), [127999] * 7)
    np.testing.assert_array_equal(CODEC.encode(stats.q99, stats), [127745] * 7)
    np.testing.assert_array_equal(CODEC.encode(stats.q01, stats), [127999] * 7)
    top = CODEC.decode(CODEC.encode(above, stats), stats).action
    np.testing.assert_allclose(top[:6], stats.q99_array[:6] - (stats.q99_array[:6] - stats.q01_array[:6]) / 510)


# Hand-computed decodes. Bin d = 127999 - id has centre n = -1 + (2d + 1) / 255, and
# a = 0.5 * (n + 1) * (q99 - q01) + q01, so:
#   id 127872 (d = 127): n = 0 exactly      -> a = (q01 + q99) / 2
#   id 127999 (d = 0):   n = -1 + 1/255     -> a = q01 + (q99 - q01) / 510
#   id 127745 (d = 254): n = 1 - 1/255      -> a = q99 - (q99 - q01) / 510
#   id 127744 (d = 255): clipped to d = 254 (reference behaviour), same as 127745
# The gripper ignores q01/q99: g = (n + 1) / 2, so d = 254 gives 1 - 1/510 = 0.9980392.
HAND_TOKENS = [127872, 127999, 127745, 127872, 127999, 127745, 127744]
HAND_EXPECTED = {
    "bridge_orig": [
        -0.0002085,  # (-0.028727 + 0.028310) / 2
        -0.0415411,  # -0.041703 + (0.040855 + 0.041703) / 510 = -0.041703 + 0.0001619
        0.0400321,  # 0.040162 - (0.040162 + 0.026094) / 510 = 0.040162 - 0.0001299
        0.0004995,  # (-0.080921 + 0.081920) / 2
        -0.0925521,  # -0.092887 + (0.077929 + 0.092887) / 510 = -0.092887 + 0.0003349
        0.2030201,  # 0.203826 - (0.203826 + 0.207183) / 510 = 0.203826 - 0.0008059
        0.9980392,  # gripper: 1 - 1/510
    ],
    "google_robot": [
        -0.0231440,  # (-0.224535 + 0.178247) / 2
        -0.1476165,  # -0.148200 + (0.149384 + 0.148200) / 510 = -0.148200 + 0.0005835
        0.2175416,  # 0.218424 - (0.218424 + 0.231590) / 510 = 0.218424 - 0.0008824
        0.1187340,  # (-0.351799 + 0.589267) / 2
        -0.4177872,  # -0.419301 + (0.352727 + 0.419301) / 510 = -0.419301 + 0.0015138
        0.4462329,  # 0.447967 - (0.447967 + 0.436435) / 510 = 0.447967 - 0.0017341
        0.9980392,  # gripper: 1 - 1/510
    ],
}


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
def test_known_token_ids_decode_to_hand_computed_metric_values(stats: ActionStatistics) -> None:
    decoded = CODEC.decode(HAND_TOKENS, stats)
    assert decoded.valid and decoded.error == "" and decoded.statistics == stats.name
    np.testing.assert_allclose(decoded.action, HAND_EXPECTED[stats.name], atol=1e-7)
    np.testing.assert_allclose(decoded.normalized[[0, 1, 2]], [0.0, -1 + 1 / 255, 1 - 1 / 255], atol=1e-12)
    assert decoded.gripper == pytest.approx(1 - 1 / 510)


def test_gripper_decodes_to_open_fraction() -> None:
    # d = 127 -> n = 0 -> 0.5 (half open); d = 0 -> n = -1 + 1/255 -> 1/510 (closed).
    decoded = CODEC.decode([127872] * 6 + [127872], BRIDGE_ORIG)
    assert decoded.gripper == pytest.approx(0.5)
    assert CODEC.decode([127872] * 6 + [127999], BRIDGE_ORIG).gripper == pytest.approx(1 / 510)


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ([127872] * 6, "expected 7"),
        ([127872] * 8, "expected 7"),
        ([127872] * 6 + [127743], "outside the action token range [127744, 127999]"),
        ([128000] + [127872] * 6, "outside"),
        ([127872] * 6 + [float("nan")], "not an integer"),
        ([127872] * 6 + [127872.0], "not an integer"),
        ([127872] * 6 + [True], "not an integer"),
        ([127872] * 6 + ["x"], "not an integer"),
        (None, "sequence"),
        ([], "expected 7"),
    ],
)
def test_bad_token_ids_are_flagged_not_garbage(ids: object, fragment: str) -> None:
    decoded = CODEC.decode(ids, BRIDGE_ORIG)  # type: ignore[arg-type]
    assert not decoded.valid
    assert fragment in decoded.error
    assert np.isnan(decoded.action).any()
    with pytest.raises(CodecError, match="invalid action tokens"):
        decoded.require_valid()


def test_partial_decode_keeps_good_positions_and_nans_bad_ones() -> None:
    decoded = CODEC.decode([127872, 5, 127872, 127872, 127872, 127872, 127872], BRIDGE_ORIG)
    assert not decoded.valid and "token 1 (dy)" in decoded.error
    assert np.isnan(decoded.action[1]) and not np.isnan(np.delete(decoded.action, 1)).any()
    assert decoded.token_ids[1] == 5
    with pytest.raises(ValueError, match="read-only"):
        decoded.action[0] = 1.0


def test_decode_accepts_numpy_and_0d_array_ids() -> None:
    ids = np.array(HAND_TOKENS, dtype=np.int32)
    assert CODEC.decode(ids, BRIDGE_ORIG).valid
    assert CODEC.decode([np.array(i) for i in HAND_TOKENS], BRIDGE_ORIG).valid


def test_strict_functions_raise() -> None:
    with pytest.raises(CodecError, match="outside"):
        CODEC.tokens_to_normalized([127743])
    with pytest.raises(CodecError, match="integers"):
        CODEC.tokens_to_normalized([1.0])
    with pytest.raises(CodecError, match="finite"):
        CODEC.normalized_to_tokens([float("nan")])
    with pytest.raises(CodecError, match="shape"):
        CODEC.encode([0.0] * 6, BRIDGE_ORIG)
    with pytest.raises(CodecError, match="finite"):
        CODEC.encode([0.0] * 6 + [float("inf")], BRIDGE_ORIG)
    with pytest.raises(CodecError, match="ActionStatistics"):
        CODEC.decode(HAND_TOKENS, "bridge_orig")  # type: ignore[arg-type]
    for args in [(100, 256), (128000, 1), (128000.0, 256), (True, 256)]:
        with pytest.raises(CodecError):
            ActionCodec(*args)  # type: ignore[arg-type]


def test_batched_encode_and_degenerate_dimension() -> None:
    stats = ActionStatistics("flat", q01=[0.0] * 7, q99=[0.0] * 5 + [1.0, 1.0])
    batch = np.zeros((4, 7))
    tokens = CODEC.encode(batch, stats)
    assert tokens.shape == (4, 7)
    # q99 == q01 normalizes to 0 and decodes back to q01.
    np.testing.assert_allclose(CODEC.decode(tokens[0], stats).action[:5], 0.0, atol=1e-12)
