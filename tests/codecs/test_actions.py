"""ActionCodec: Magma's exact conventions (magma-reference.md, "Actions (7-DoF)").

Encoding: x = clip(2 (a - q01) / (q99 - q01) - 1, -1, 1) where the mask is true, the raw
value elsewhere (the gripper); id = V - digitize(clip(x, -1, 1), linspace(-1, 1, 256)).
Decoding: d = V - id, bin clip(d - 1, 0, 254), value = bin centre, un-normalized where the
mask is true, the bin centre itself elsewhere.
"""

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

V = 128000
CODEC = ActionCodec(V)
STATS = [BRIDGE_ORIG, GOOGLE_ROBOT]


def test_token_range_is_the_256_reserved_base_vocab_ids() -> None:
    assert CODEC.token_range == (127744, 127999)
    assert CODEC.token_range.size == 256
    assert CODEC.bin_edges.shape == (256,) and CODEC.bin_centres.shape == (255,)
    assert CODEC.bin_width == pytest.approx(2 / 255)
    # The tiny model's codec: same layout under a small base vocabulary.
    assert ActionCodec(1000).token_range == (744, 999)


# --- hand-computed (value -> id) table ------------------------------------------------------
# Edge k is -1 + 2k/255. digitize(x) = the number of edges <= x (right=False), so for
# -1 <= x < 1 it is floor((x + 1) * 255 / 2) + 1, and 256 for x >= 1 (after clipping).
NORMALIZED_TABLE = [
    (-1.0, V - 1),        # digitize(-1) = 1 (edge 0 <= -1)
    (-1.5, V - 1),        # x < -1 clips to -1
    (-1e9, V - 1),
    (1.0, V - 256),       # x = 1 = edge 255: digitize = 256, NOT V - 255
    (1.5, V - 256),       # x > 1 clips to 1
    (1e9, V - 256),
    (0.0, V - 128),       # floor(127.5) + 1 = 128
    (0.5, V - 192),       # floor(191.25) + 1 = 192
    (-0.5, V - 64),       # floor(63.75) + 1 = 64
    (0.99, V - 254),      # floor(253.725) + 1 = 254
    (0.996, V - 255),     # floor(254.49) + 1 = 255
    (-0.996, V - 1),      # floor(0.51) + 1 = 1
]


@pytest.mark.parametrize(("x", "token"), NORMALIZED_TABLE)
def test_binned_values_encode_to_hand_computed_ids(x: float, token: int) -> None:
    assert CODEC.normalized_to_tokens([x]).tolist() == [token]


def test_exact_edges_belong_to_the_bin_on_their_right() -> None:
    edges = CODEC.bin_edges
    np.testing.assert_allclose(edges, -1 + 2 * np.arange(256) / 255, atol=1e-15)
    # x = edge k: digitize = k + 1 -> id V - 1 - k; just below it: digitize = k -> V - k.
    k = np.arange(1, 256)
    np.testing.assert_array_equal(CODEC.normalized_to_tokens(edges[1:]), V - 1 - k)
    np.testing.assert_array_equal(CODEC.normalized_to_tokens(np.nextafter(edges[1:], -np.inf)), V - k)
    assert CODEC.normalized_to_tokens([edges[0]]).tolist() == [V - 1]


# A set with simple numbers so the metric table can be checked by hand; dim 4 is degenerate.
SIMPLE = ActionStatistics("simple", q01=[-1.0, -2.0, 0.0, -0.5, 0.3, -4.0, 0.0],
                          q99=[1.0, 2.0, 4.0, 0.5, 0.3, 4.0, 1.0])

METRIC_TABLE = [
    # dim 0: n = (0.5 + 1) - 1 = 0.5 -> V-192; dim 1: a = q01 -> n = -1 -> V-1;
    # dim 2: a = q99 -> n = 1 -> V-256; dim 3: n = 2 * 1.1 / 1 - 1 = 1.2 -> clipped -> V-256;
    # dim 4: q99 == q01 -> n = 0 -> V-128; dim 5: n = 2 * 5 / 8 - 1 = 0.25 -> floor(159.375)+1 = 160;
    # gripper 0.0 (closed), raw -> V-128.
    ([0.5, -2.0, 4.0, 0.6, 0.3, 1.0, 0.0], [V - 192, V - 1, V - 256, V - 256, V - 128, V - 160, V - 128]),
    # dim 0: a = 1.7 > q99 -> V-256; dim 1: a = -9 < q01 -> V-1; dim 2: n = 2 * 2 / 4 - 1 = 0 -> V-128;
    # dim 3: n = 2 * 0.25 - 1 = -0.5 -> V-64; dim 4: a != q01 but degenerate -> n = 0 -> V-128;
    # dim 5: n = 2 * 2 / 8 - 1 = -0.5 -> V-64; gripper 1.0 (open), raw -> V-256.
    ([1.7, -9.0, 2.0, -0.25, 7.0, -2.0, 1.0], [V - 256, V - 1, V - 128, V - 64, V - 128, V - 64, V - 256]),
    # gripper 0.5 -> floor(191.25) + 1 = 192; dims at q01 -> V-1.
    ([-1.0, -2.0, 0.0, -0.5, 0.3, -4.0, 0.5], [V - 1] * 4 + [V - 128, V - 1, V - 192]),
    # zeros: the middle of every range (-> V-128) but dim 2, where 0 is q01 (-> V-1);
    # gripper beyond the label range: raw 1.3 clips to 1 -> V-256; raw -2 clips to -1 -> V-1.
    ([0.0] * 6 + [1.3], [V - 128, V - 128, V - 1, V - 128, V - 128, V - 128, V - 256]),
    ([0.0] * 6 + [-2.0], [V - 128, V - 128, V - 1, V - 128, V - 128, V - 128, V - 1]),
]


@pytest.mark.parametrize(("action", "tokens"), METRIC_TABLE)
def test_metric_actions_encode_to_hand_computed_ids(action: list[float], tokens: list[int]) -> None:
    assert CODEC.encode(action, SIMPLE).tolist() == tokens


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
def test_published_sets_q01_q99_and_gripper_labels(stats: ActionStatistics) -> None:
    # q01 -> -1 -> V-1 and q99 -> 1 -> V-256 on dims 0..5; closed gripper 0 -> V-128, open 1 -> V-256.
    assert CODEC.encode([*stats.q01[:6], 0.0], stats).tolist() == [V - 1] * 6 + [V - 128]
    assert CODEC.encode([*stats.q99[:6], 1.0], stats).tolist() == [V - 256] * 7
    above = [q + 10.0 for q in stats.q99[:6]]
    below = [q - 10.0 for q in stats.q01[:6]]
    assert CODEC.encode([*above, 5.0], stats).tolist() == [V - 256] * 7
    assert CODEC.encode([*below, -5.0], stats).tolist() == [V - 1] * 7


# --- decoding ---------------------------------------------------------------------------------
def test_decode_bins_are_clip_d_minus_1() -> None:
    ids = V - np.arange(1, 257)              # d = 1 .. 256
    bins = CODEC.token_bins(ids)
    np.testing.assert_array_equal(bins, np.minimum(np.arange(256), 254))
    np.testing.assert_array_equal(CODEC.tokens_to_normalized(ids), CODEC.bin_centres[bins])
    assert CODEC.tokens_to_normalized([V - 256])[0] == CODEC.tokens_to_normalized([V - 255])[0]
    assert CODEC.tokens_to_normalized([V - 256])[0] == pytest.approx(1 - 1 / 255, abs=1e-15)
    assert CODEC.tokens_to_normalized([V - 1])[0] == pytest.approx(-1 + 1 / 255, abs=1e-15)


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
def test_gripper_decodes_to_the_bin_centre_itself(stats: ActionStatistics) -> None:
    closed = CODEC.decode([V - 128] * 7, stats)
    opened = CODEC.decode([V - 128] * 6 + [V - 256], stats)
    assert closed.valid and opened.valid
    assert closed.gripper == pytest.approx(0.0, abs=1e-12)             # NOT 0.5
    assert opened.gripper == pytest.approx(1 - 1 / 255, abs=1e-12)      # 0.996
    assert CODEC.decode([V - 128] * 6 + [V - 192], stats).gripper == pytest.approx(-1 + 383 / 255)
    # Dims 0..5 at bin 127 (centre 0) un-normalize to the middle of q01..q99.
    np.testing.assert_allclose(closed.action[:6], 0.5 * (stats.q01_array[:6] + stats.q99_array[:6]), atol=1e-15)


# Hand-computed metric decodes with the published full-precision sets:
#   V-128 (bin 127, centre 0)      -> a = (q01 + q99) / 2
#   V-1   (bin 0, centre -254/255) -> a = q01 + (q99 - q01) / 510
#   V-256 (bin 254, centre 254/255) -> a = q99 - (q99 - q01) / 510; gripper 254/255
HAND_TOKENS = [V - 128, V - 1, V - 256, V - 128, V - 1, V - 256, V - 256]
HAND_EXPECTED = {
    "bridge_orig": [
        -0.00020878732204439136,  # (-0.02872725307941437 + 0.028309678435325586) / 2
        -0.04154161971982787,     # -0.04170349963009357 + 0.08255875423550596 / 510
        0.040031673989313475,     # 0.040161586627364146 - 0.06625544540584086 / 510
        0.000499713420867777,     # (-0.08092105075716972 + 0.08192047759890528) / 2
        -0.0925520627235665,      # -0.09288699507713317 + 0.170815500319004 / 510
        0.20301984594966835,      # 0.20382574498653397 - 0.4110085088014601 / 510
        0.996078431372549,        # gripper: 254 / 255, not un-normalized
    ],
    "google_robot": [
        -0.023144201785326016,    # (-0.22453527510166169 + 0.17824687153100965) / 2
        -0.14761663494653562,     # -0.14820013284683228 + 0.29758392915129633 / 510
        0.21754116925889364,      # 0.21842354819178575 - 0.45001325577497475 / 510
        0.11873355880379671,      # (-0.3517994859814644 + 0.5892666035890578) / 2
        -0.417787347686057,       # -0.4193011274933815 + 0.772027701735496 / 510
        0.4462326921125247,       # 0.44796681255102094 - 0.8844014236330979 / 510
        0.996078431372549,
    ],
}


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
def test_known_token_ids_decode_to_hand_computed_metric_values(stats: ActionStatistics) -> None:
    decoded = CODEC.decode(HAND_TOKENS, stats)
    assert decoded.valid and decoded.error == "" and decoded.statistics == stats.name
    np.testing.assert_allclose(decoded.action, HAND_EXPECTED[stats.name], rtol=0, atol=1e-14)


@pytest.mark.parametrize("stats", [*STATS, SIMPLE], ids=lambda s: s.name)
def test_encode_of_decode_round_trips_every_id(stats: ActionStatistics) -> None:
    ids = np.arange(V - 256, V)
    for dim in range(7):
        batch = np.full((ids.size, 7), V - 128)
        batch[:, dim] = ids
        decoded = np.stack([CODEC.decode(row, stats).action for row in batch])
        again = CODEC.encode(decoded, stats)
        expected = batch.copy()
        if stats.q01[dim] == stats.q99[dim] and stats.mask[dim]:
            expected[:, dim] = V - 128   # a degenerate dimension decodes to q01 whatever the id
        else:
            expected[:, dim] = np.where(ids == V - 256, V - 255, ids)  # V-256 and V-255 share bin 254
        np.testing.assert_array_equal(again, expected, err_msg=f"dim {dim}")
        # and decoding again gives the same values: decode(encode(decode(ids))) == decode(ids)
        redecoded = np.stack([CODEC.decode(row, stats).action for row in again])
        np.testing.assert_allclose(redecoded, decoded, rtol=0, atol=1e-15)


def _action_strategy(stats: ActionStatistics) -> st.SearchStrategy[list[float]]:
    dims = [st.floats(lo, hi, allow_nan=False) for lo, hi in zip(stats.q01[:6], stats.q99[:6], strict=True)]
    return st.tuples(*dims, st.floats(0.0, 1.0)).map(list)


@pytest.mark.parametrize("stats", STATS, ids=lambda s: s.name)
@settings(deadline=None, max_examples=200, derandomize=True)
@given(data=st.data())
def test_decode_encode_is_within_half_a_bin(stats: ActionStatistics, data: st.DataObject) -> None:
    action = np.array(data.draw(_action_strategy(stats)))
    decoded = CODEC.decode(CODEC.encode(action, stats), stats)
    assert decoded.valid, decoded.error
    # Half a bin is 1/255 in binned units; dims 0..5 scale by (q99 - q01) / 2, the raw gripper by 1.
    span = np.array([*(0.5 * np.subtract(stats.q99[:6], stats.q01[:6])), 1.0])
    tolerance = 0.5 * CODEC.bin_width * span + 1e-12
    assert np.all(np.abs(decoded.action - action) <= tolerance)


@settings(deadline=None, derandomize=True)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_any_finite_value_encodes_inside_the_range(values: list[float]) -> None:
    tokens = CODEC.normalized_to_tokens(values)
    assert np.all((tokens >= V - 256) & (tokens <= V - 1))
    # numpy digitize semantics, written out: V - (number of edges <= clip(x, -1, 1))
    clipped = np.clip(values, -1, 1)
    expected = V - np.array([(CODEC.bin_edges <= x).sum() for x in clipped])
    np.testing.assert_array_equal(tokens, expected)


def test_mask_chooses_what_is_normalized() -> None:
    # The gripper normalized (mask true) and dim 0 passed through raw (mask false).
    stats = ActionStatistics("masked", q01=[-4.0] + [-1.0] * 5 + [0.0], q99=[4.0] + [1.0] * 5 + [2.0],
                             mask=[False] + [True] * 5 + [True])
    # dim 0 raw 0.5 -> V-192 (not normalized with q01/q99 = -4/4); gripper 1.5 -> 2*1.5/2 - 1 = 0.5 -> V-192
    assert CODEC.encode([0.5, 0, 0, 0, 0, 0, 1.5], stats).tolist() == [V - 192] + [V - 128] * 5 + [V - 192]
    decoded = CODEC.decode([V - 192] + [V - 128] * 5 + [V - 192], stats)
    centre = -1 + 383 / 255
    assert decoded.action[0] == pytest.approx(centre)                                 # raw bin centre
    assert decoded.action[6] == pytest.approx(0.5 * (centre + 1) * 2.0)               # un-normalized


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ([V - 128] * 6, "expected 7"),
        ([V - 128] * 8, "expected 7"),
        ([V - 128] * 6 + [V - 257], "outside the action token range [127744, 127999]"),
        ([V] + [V - 128] * 6, "outside"),
        ([V - 128] * 6 + [float("nan")], "not an integer"),
        ([V - 128] * 6 + [float(V - 128)], "not an integer"),
        ([V - 128] * 6 + [True], "not an integer"),
        ([V - 128] * 6 + ["x"], "not an integer"),
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
    decoded = CODEC.decode([V - 128, 5, V - 128, V - 128, V - 128, V - 128, V - 128], BRIDGE_ORIG)
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
        CODEC.tokens_to_normalized([V - 257])
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
    tokens = CODEC.encode(np.zeros((4, 7)), SIMPLE)
    assert tokens.shape == (4, 7)
    # q99 == q01 (dim 4) decodes back to q01 whatever the id.
    for token in (V - 1, V - 128, V - 256):
        assert CODEC.decode([V - 128] * 4 + [token, V - 128, V - 128], SIMPLE).action[4] == pytest.approx(0.3)
