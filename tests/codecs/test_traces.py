"""Trace-of-Mark: query text, answer parsing/formatting round trips, robustness, drawing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.codecs import (
    TRACE_END,
    TRACE_START,
    CodecError,
    TraceParse,
    TracePoints,
    build_tom_query,
    draw_traces,
    format_traces,
    grid_point_to_pixel,
    parse_traces,
    trace_color,
)

EXAMPLE = (
    'Mark 3 at [10,20], Mark 7 at [30,40] should be moved, and their future positions are:\n\n'
    '"Mark 3": "[[11,21],[12,22]]"\n\n"Mark 7": "[[31,41]]"\n\n'
)


def test_query_wording() -> None:
    assert build_tom_query("pick up the coke can") == (
        "The robot is doing: pick up the coke can. To finish the task, how to move the numerical marks "
        "in the image for the next 8 steps?"
    )
    assert build_tom_query("  open the drawer. ", 5).endswith("doing: open the drawer. To finish the task, how "
                                                              "to move the numerical marks in the image for the "
                                                              "next 5 steps?")
    assert "in the image with speed 8 for the next 8 steps?" in build_tom_query("x", speed=8)
    assert build_tom_query("x", 4, mark_ids=[1, 2, 3]) == (
        "The image is split into 256x256 grids, and labeled with numeric marks: [1, 2, 3].\n"
        "The robot is doing: x. To finish the task, how to move the numerical marks in the image for the next "
        "4 steps?\n"
    )
    for task, steps in [("", 8), (" . ", 8), ("x", 0), ("x", 2.0), (None, 8)]:
        with pytest.raises(CodecError):
            build_tom_query(task, steps)  # type: ignore[arg-type]


def test_format_matches_the_reference_layout() -> None:
    current = {3: (10, 20), 7: (30, 40)}
    future = {3: [(11, 21), (12, 22)], 7: [(31, 41)]}
    assert format_traces(current, future) == EXAMPLE
    wrapped = format_traces(current, future, trace_tokens=True)
    assert wrapped == EXAMPLE.replace('are:\n\n"', f'are:\n\n{TRACE_START}"') + TRACE_END


def test_example_parses() -> None:
    parsed = parse_traces(EXAMPLE, (640, 480))
    assert parsed.ok, parsed.errors
    assert parsed.moved_mark_ids == (3, 7)
    assert parsed.traces[3].grid == ((11, 21), (12, 22))
    assert parsed.traces[3].pixels == (grid_point_to_pixel(11, 21, (640, 480)), grid_point_to_pixel(12, 22, (640, 480)))
    assert [m.grid for m in parsed.moved_marks] == [(10, 20), (30, 40)]
    assert parsed.traces[7].pixel_array().shape == (1, 2)


grid_points = st.tuples(st.integers(0, 255), st.integers(0, 255))


@st.composite
def answers(draw: st.DrawFn) -> tuple[dict[int, tuple[int, int]], dict[int, list[tuple[int, int]]]]:
    ids = draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True))
    current = {i: draw(grid_points) for i in ids}
    future = {i: draw(st.lists(grid_points, min_size=1, max_size=16)) for i in ids}
    return current, future


@settings(deadline=None, max_examples=200)
@given(answer=answers(), tokens=st.booleans(), size=st.tuples(st.integers(1, 2000), st.integers(1, 2000)))
def test_well_formed_answers_parse_exactly(answer: tuple[dict, dict], tokens: bool, size: tuple[int, int]) -> None:
    current, future = answer
    parsed = parse_traces(format_traces(current, future, trace_tokens=tokens), size)
    assert parsed.ok, parsed.errors
    assert parsed.moved_mark_ids == tuple(current)
    assert [m.grid for m in parsed.moved_marks] == list(current.values())
    assert list(parsed.traces) == list(current)
    for mark_id, points in future.items():
        assert parsed.traces[mark_id].grid == tuple(points)
        assert parsed.traces[mark_id].pixels == tuple(grid_point_to_pixel(x, y, size) for x, y in points)


def test_loose_variants_parse() -> None:
    text = ('Mark 3 at [10, 20], Mark 7 at [30,40] should be moved, and their future positions are: '
            '{"Mark 3": "[[ 11, 21 ], [12,22]]", "Mark 7":"[[31,41]]"}')
    parsed = parse_traces(text, (256, 256))
    assert parsed.ok, parsed.errors
    assert parsed.traces[3].grid == ((11, 21), (12, 22))
    escaped = EXAMPLE.replace('"', '\\"')
    parsed = parse_traces(escaped, (256, 256))
    assert parsed.ok, parsed.errors
    assert parsed.traces[7].grid == ((31, 41),)


@pytest.mark.parametrize(
    ("text", "kept", "fragment"),
    [
        ("", {}, "empty answer"),
        ("The robot should grasp the can.", {}, "missing the"),
        (EXAMPLE.replace("[12,22]", "[300,22]"), {3: 1, 7: 1}, "outside 0..255; kept 1 point(s) before it"),
        (EXAMPLE.replace("[12,22]", "[-12,22]"), {3: 1, 7: 1}, "outside 0..255"),
        (EXAMPLE.replace("[12,22]", "[" + "9" * 5000 + ",22]"), {3: 1, 7: 1}, "stops at"),
        (EXAMPLE.replace("[12,22]", "[" + "9" * 20 + ",22]"), {3: 1, 7: 1}, "too large"),
        (EXAMPLE.replace("[12,22]", "[１２,22]"), {3: 1, 7: 1}, "not an integer"),
        (EXAMPLE.replace("[[31,41]]", "[]"), {3: 2}, "mark 7 has no points"),
        (EXAMPLE.replace("[[31,41]]", "nothing"), {3: 2}, "has no point list"),
        (EXAMPLE.replace('"Mark 7"', '"Mark 3"'), {3: 2}, "more than one trace"),
        (EXAMPLE.replace('"Mark 7"', '"Mark -7"'), {3: 2}, "negative"),
        (EXAMPLE.replace(", Mark 7 at [30,40]", ""), {3: 2, 7: 1}, "mark 7 has a trace but is not listed"),
        (EXAMPLE.replace('"Mark 7": "[[31,41]]"', ""), {3: 2}, "mark 7 is listed as moved but has no trace"),
        (EXAMPLE.split("should")[1], {3: 2, 7: 1}, "missing the"),
        (EXAMPLE[:-8], {3: 2}, "mark 7 is truncated"),
        (EXAMPLE.replace('"Mark 7": "[[31,41]]"', '"Mark 7'), {3: 2}, "incomplete trace key"),
        (EXAMPLE.replace('"Mark 3', TRACE_START + '"Mark 3'), {3: 2, 7: 1}, "without <trace_end>"),
        (EXAMPLE + "\x00\u202e🤖", {3: 2, 7: 1}, None),
    ],
)
def test_garbage_is_reported_not_raised(text: str, kept: dict[int, int], fragment: str | None) -> None:
    parsed = parse_traces(text, (256, 256))
    assert {k: len(v) for k, v in parsed.traces.items()} == kept
    if fragment is None:
        assert parsed.ok, parsed.errors
    else:
        assert any(fragment in e for e in parsed.errors), parsed.errors


def test_non_text_is_reported() -> None:
    parsed = parse_traces(None, (256, 256))  # type: ignore[arg-type]
    assert parsed.traces == {} and "expected answer text" in parsed.errors[0]


@settings(deadline=None, max_examples=200)
@given(answer=answers(), tokens=st.booleans(), cut=st.floats(0, 1))
def test_truncated_answers_keep_valid_prefixes(answer: tuple[dict, dict], tokens: bool, cut: float) -> None:
    current, future = answer
    text = format_traces(current, future, trace_tokens=tokens)
    prefix = text[: int(cut * len(text))]
    parsed = parse_traces(prefix, (640, 480))
    for mark_id, trace in parsed.traces.items():
        assert trace.grid == tuple(future[mark_id])[: len(trace)]
    for mark in parsed.moved_marks:
        assert current[mark.id] == mark.grid
    if len(prefix) < text.rindex("]]") + 2 or (tokens and len(prefix) < len(text)):
        assert parsed.errors


NOISE = st.lists(
    st.sampled_from([*'Mark at[],.:"-0123456789 \n{}\\', "Mark ", "should be moved", TRACE_START, TRACE_END,
                     '"Mark 3": "[[', "１", "é"])
).map("".join)


@settings(deadline=None, max_examples=300)
@given(text=st.one_of(st.text(), NOISE))
def test_random_text_never_raises(text: str) -> None:
    parsed = parse_traces(text, (640, 480))
    assert isinstance(parsed, TraceParse)
    assert parsed.traces or parsed.errors
    for trace in parsed.traces.values():
        assert len(trace) >= 1
        assert all(0 <= x < 256 and 0 <= y < 256 for x, y in trace.grid)


@settings(deadline=None, max_examples=200)
@given(answer=answers(), edits=st.lists(st.tuples(st.floats(0, 1), st.text(max_size=3)), max_size=5))
def test_mutated_answers_never_raise(answer: tuple[dict, dict], edits: list[tuple[float, str]]) -> None:
    text = format_traces(*answer, trace_tokens=True)
    for where, insert in edits:
        k = int(where * len(text))
        text = text[:k] + insert + text[k + 1:]
    parsed = parse_traces(text, (320, 240))
    assert parsed.traces or parsed.errors or not edits


def test_format_rejects_bad_input() -> None:
    with pytest.raises(CodecError, match="differ"):
        format_traces({1: (0, 0)}, {2: [(1, 1)]})
    with pytest.raises(CodecError, match="outside"):
        format_traces({1: (0, 256)}, {1: [(1, 1)]})
    with pytest.raises(CodecError, match="empty"):
        format_traces({1: (0, 0)}, {1: []})
    with pytest.raises(CodecError, match="at least one"):
        format_traces({}, {})


def test_draw_traces_copies_and_paints_along_the_path() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    original = image.copy()
    parsed = parse_traces(EXAMPLE, (640, 480))
    drawn = draw_traces(image, parsed)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    np.testing.assert_array_equal(image, original)
    # Midpoint of mark 3's first segment (its current cell -> first future cell) is painted.
    (u0, v0), (u1, v1) = parsed.moved_marks[0].pixel, parsed.traces[3].pixels[0]
    assert drawn[round((v0 + v1) / 2), round((u0 + u1) / 2)].any()
    assert drawn[round(parsed.traces[7].pixels[0][1]), round(parsed.traces[7].pixels[0][0])].any()
    assert trace_color(3) != trace_color(7)
    # A plain mapping without start points; a single point becomes a dot.
    single = {5: TracePoints.from_grid([(128, 128)], (640, 480))}
    dotted = draw_traces(image, single)
    u, v = single[5].pixels[0]
    assert tuple(dotted[round(v), round(u)]) == trace_color(5)
    with pytest.raises(CodecError):
        draw_traces(np.zeros((4, 4)), single)
