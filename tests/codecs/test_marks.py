"""Set-of-Mark: placement without overlapping labels, drawing, parsing and formatting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.codecs import (
    CodecError,
    ImageSize,
    Mark,
    MarkParse,
    assign_mark_ids,
    draw_marks,
    format_marks,
    grid_point_to_pixel,
    mark_style,
    parse_marks,
    place_marks_at_points,
    place_marks_on_grid,
)

SIZES = [(64, 64), (256, 256), (320, 240), (640, 480), (1280, 720), (300, 900)]


def _masks_are_disjoint(size: tuple[int, int], marks: tuple[Mark, ...]) -> bool:
    """Draw each mark alone; no pixel may be touched by two marks."""
    blank = np.zeros((size[1], size[0], 3), np.uint8)
    style = mark_style(size, max(m.id for m in marks))
    count = np.zeros(blank.shape[:2], np.int32)
    for mark in marks:
        count += draw_marks(blank, [mark], style=style).any(axis=2)
    return int(count.max()) <= 1


def _min_distance(marks: tuple[Mark, ...]) -> float:
    return min((np.hypot(a.u - b.u, a.v - b.v) for a, b in itertools.combinations(marks, 2)), default=np.inf)


@pytest.mark.parametrize("size", SIZES)
def test_densest_grid_has_disjoint_labels(size: tuple[int, int]) -> None:
    style = mark_style(size, 99)
    rows, cols = int(size[1] // style.min_spacing), int(size[0] // style.min_spacing)
    rows, cols = min(rows, 9), min(cols, 11)  # ids stay two-digit
    marks = place_marks_on_grid(size, rows, cols, seed=3)
    assert len(marks) == rows * cols
    assert _min_distance(marks) >= mark_style(size, rows * cols).min_spacing
    assert _masks_are_disjoint(size, marks)


def test_too_dense_grid_is_refused_with_what_fits() -> None:
    with pytest.raises(CodecError, match=r"at most \d+ rows x \d+ cols fit"):
        place_marks_on_grid((256, 256), 20, 20)
    with pytest.raises(CodecError, match="rows"):
        place_marks_on_grid((256, 256), 0, 2)


@pytest.mark.parametrize("seed", range(20))
def test_marks_at_random_points_never_overlap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = SIZES[seed % len(SIZES)]
    points = rng.uniform(-20, 1.1 * max(size), size=(150, 2))
    placement = place_marks_at_points(points, size, seed=seed)
    marks = placement.marks
    assert len(marks) >= 1
    assert sorted(m.id for m in marks) == list(range(1, len(marks) + 1))
    for mark, index in zip(marks, placement.source_indices, strict=True):
        assert (mark.u, mark.v) == tuple(points[index])
        assert 0 <= mark.u < size[0] and 0 <= mark.v < size[1]
    assert _min_distance(marks) >= mark_style(size, len(points)).min_spacing
    if seed < 6:
        assert _masks_are_disjoint(size, marks)


def test_min_spacing_and_max_marks_are_honoured() -> None:
    points = [(x, 100.0) for x in range(0, 640, 5)]
    placement = place_marks_at_points(points, (640, 480), min_spacing=100, max_marks=4, shuffle_ids=False)
    assert [m.id for m in placement.marks] == [1, 2, 3, 4]
    assert placement.source_indices == (0, 20, 40, 60)
    # A spacing below the label size is raised to it.
    tight = place_marks_at_points(points, (640, 480), min_spacing=1)
    assert _min_distance(tight.marks) >= mark_style((640, 480), len(points)).min_spacing


def test_placement_rejects_bad_arguments() -> None:
    assert place_marks_at_points(np.empty((0, 2)), (64, 64)).marks == ()
    for kwargs in [{"max_marks": -1}, {"max_marks": 2.5}, {"min_spacing": float("nan")}]:
        with pytest.raises(CodecError):
            place_marks_at_points([(1.0, 1.0)], (64, 64), **kwargs)
    with pytest.raises(CodecError, match="points"):
        place_marks_at_points([(1.0, 2.0, 3.0)], (64, 64))


def test_ids_are_a_seeded_permutation_or_sequential() -> None:
    assert assign_mark_ids(12, seed=5) == assign_mark_ids(12, seed=5)
    assert sorted(assign_mark_ids(12, seed=5)) == list(range(1, 13))
    assert assign_mark_ids(12, seed=5) != assign_mark_ids(12, seed=6)
    assert assign_mark_ids(4, shuffle=False) == [1, 2, 3, 4]
    assert [m.id for m in place_marks_on_grid((256, 256), 2, 2, shuffle_ids=False)] == [1, 2, 3, 4]


def test_draw_marks_copies_and_paints_red_disks_with_white_numbers() -> None:
    image = np.full((480, 640, 3), 40, np.uint8)
    original = image.copy()
    marks = place_marks_on_grid((640, 480), 3, 4, seed=0)
    drawn = draw_marks(image, marks)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    np.testing.assert_array_equal(image, original)
    radius = mark_style((640, 480), 12).radius
    for mark in marks:
        u, v = round(mark.u), round(mark.v)
        patch = drawn[v - radius + 2:v + radius - 1, u - radius + 2:u + radius - 1].reshape(-1, 3)
        assert np.any(np.all(patch == (255, 0, 0), axis=1)), "red disk"
        assert np.any(np.all(patch == (255, 255, 255), axis=1)), "white number"
    assert np.array_equal(draw_marks(image, []), image)


def test_number_height_is_about_three_percent_of_width() -> None:
    width = 1000
    drawn = draw_marks(np.zeros((400, width, 3), np.uint8), [Mark.at_pixel(8, 500, 200, (width, 400))])
    rows = np.flatnonzero(np.all(drawn >= 200, axis=2).any(axis=1))
    height = rows.max() - rows.min() + 1
    assert 0.025 * width <= height <= 0.04 * width


def test_draw_marks_rejects_non_rgb_images() -> None:
    for bad in [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8)]:
        with pytest.raises(CodecError):
            draw_marks(bad, [])


# --- parsing ------------------------------------------------------------------------------

grid_points = st.tuples(st.integers(0, 255), st.integers(0, 255))
image_sizes = st.tuples(st.integers(1, 2000), st.integers(1, 2000))


@settings(deadline=None, max_examples=200)
@given(
    answer=st.dictionaries(st.integers(0, 10**6), grid_points, min_size=1, max_size=15),
    size=image_sizes,
)
def test_well_formed_answers_parse_exactly(answer: dict[int, tuple[int, int]], size: tuple[int, int]) -> None:
    marks = [Mark.at_grid(i, x, y, size) for i, (x, y) in answer.items()]
    parsed = parse_marks(format_marks(marks), size)
    assert parsed.ok, parsed.errors
    assert parsed.marks == tuple(marks)
    assert [m.pixel for m in parsed.marks] == [grid_point_to_pixel(x, y, size) for x, y in answer.values()]


def test_separator_and_spacing_variants_parse() -> None:
    text = "Mark 1 at [12, 40], mark 4 at [ 200,31 ]\nMARK 9 at[0,255]."
    parsed = parse_marks(text, (256, 256))
    assert parsed.ok and [(m.id, m.grid) for m in parsed.marks] == [(1, (12, 40)), (4, (200, 31)), (9, (0, 255))]


@pytest.mark.parametrize(
    ("text", "kept", "fragment"),
    [
        ("", [], "empty answer"),
        ("I cannot see any marks.", [], "no 'Mark N at [x,y]' found"),
        ("Mark 1 at [3,4]. Mark 2 at [256,4]", [1], "outside 0..255"),
        ("Mark 1 at [3,4]. Mark 2 at [-3,4]", [1], "outside 0..255"),
        ("Mark 1 at [3,4]. Mark -2 at [3,4]", [1], "negative"),
        ("Mark 1 at [3,4]. Mark 2 at [" + "9" * 5000 + ",4]", [1], "incomplete mark"),
        ("Mark 1 at [3,4]. Mark 2 at [" + "9" * 50 + ",4]", [1], "too large"),
        ("Mark " + "7" * 5000 + " at [3,4]", [], "incomplete mark"),
        ("Mark 1 at [3,4]. Mark 2 at [１２,4]", [1], "not an integer"),
        ("Mark 1 at [3,4]. Mark 2 at [3.5,4]", [1], "not an integer"),
        ("Mark 1 at [3,4]. Mark 2 at [3,4,5]", [1], "two coordinates"),
        ("Mark 1 at [3,4]. Mark 1 at [5,6]", [1], "more than once"),
        ("Mark 1 at [3,4]. Mark 2 at [17", [1], "incomplete mark at character 17"),
        ("Mark 1 at [3,4]. Mark", [1], "incomplete mark"),
        ("Mark x at [3,4]", [], "not an integer"),
        ("Mark 1 at [3,4] \x00\ud7ff\u202e Mark 2 at [5,6]", [1, 2], None),
    ],
)
def test_garbage_is_reported_not_raised(text: str, kept: list[int], fragment: str | None) -> None:
    parsed = parse_marks(text, (256, 256))
    assert [m.id for m in parsed.marks] == kept
    if fragment is None:
        assert parsed.ok
    else:
        assert any(fragment in e for e in parsed.errors), parsed.errors


def test_non_text_is_reported() -> None:
    for bad in (None, b"Mark 1 at [3,4]", 5):
        parsed = parse_marks(bad, (256, 256))  # type: ignore[arg-type]
        assert parsed.marks == () and "expected answer text" in parsed.errors[0]


NOISE = st.lists(st.sampled_from([*"Mark at[],.:\"-0123456789 \n", "Mark ", "１", "é", "\u202e"])).map("".join)


@settings(deadline=None, max_examples=300)
@given(text=st.one_of(st.text(), NOISE))
def test_random_text_never_raises(text: str) -> None:
    parsed = parse_marks(text, (640, 480))
    assert isinstance(parsed, MarkParse)
    assert parsed.marks or parsed.errors
    for mark in parsed.marks:
        assert 0 <= mark.grid_x < 256 and 0 <= mark.grid_y < 256 and mark.id >= 0


@settings(deadline=None, max_examples=200)
@given(
    answer=st.dictionaries(st.integers(1, 99), grid_points, min_size=1, max_size=8),
    cut=st.floats(0, 1),
)
def test_truncated_answers_keep_exactly_the_complete_marks(answer: dict[int, tuple[int, int]], cut: float) -> None:
    marks = [Mark.at_grid(i, x, y, (256, 256)) for i, (x, y) in answer.items()]
    text = format_marks(marks)
    prefix = text[: int(cut * len(text))]
    parsed = parse_marks(prefix, (256, 256))
    starts = [text.index(f"Mark {m.id} at ") for m in marks]
    ends = [text.index("]", s) + 1 for s in starts]
    assert parsed.marks == tuple(m for m, e in zip(marks, ends, strict=True) if e <= len(prefix))
    # A mark whose word "Mark" survived but whose point did not is reported.
    if any(s + 4 <= len(prefix) < e for s, e in zip(starts, ends, strict=True)):
        assert any("incomplete mark" in e for e in parsed.errors)


@settings(deadline=None, max_examples=200)
@given(
    answer=st.dictionaries(st.integers(1, 99), grid_points, min_size=1, max_size=8),
    edits=st.lists(st.tuples(st.floats(0, 1), st.text(max_size=3)), max_size=5),
)
def test_mutated_answers_never_raise(answer: dict[int, tuple[int, int]], edits: list[tuple[float, str]]) -> None:
    text = format_marks([Mark.at_grid(i, x, y, (256, 256)) for i, (x, y) in answer.items()])
    for where, insert in edits:
        k = int(where * len(text))
        text = text[:k] + insert + text[k + 1:]
    parsed = parse_marks(text, ImageSize(100, 50))
    assert parsed.marks or parsed.errors
    assert len({m.id for m in parsed.marks}) == len(parsed.marks)
