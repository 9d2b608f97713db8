"""Trace-of-Mark (ToM) labels from point tracks: ``magma-ros dataset label-traces DIR``.

For each window of up to ``window`` (16) frames of an episode, starting every ``stride``
steps, following Magma's recipe (magma-reference.md, "Building ToM labels from video"):

1. track an ``s x s`` grid (s = 15) of the window's first frame through the window
   (:mod:`magma_ros.training.tracking`; OpenCV Lucas-Kanade by default);
2. keep points visible in more than half of the frames;
3. camera motion: when more than 80% of them move more than 1 px per step on average, map
   every frame back onto the first with a RANSAC homography (reprojection threshold 4 px);
4. foreground = points whose mean step after that exceeds 1 px (robot data; 2 px for video);
5. k-means over the traces: 2-5 clusters of moving points, 4-14 of static ones, one mark per
   cluster (the trace nearest its centre); marks whose labels would overlap are dropped,
   moving ones first kept;
6. Set-of-Mark marks (ids a seeded random permutation) drawn on the first frame with
   :func:`magma_ros.codecs.draw_marks`; the question from :func:`magma_ros.codecs.build_tom_query`
   and the answer from :func:`magma_ros.codecs.format_traces`, Magma's exact text.

Distances are measured on Magma's 256 grid (pixels of a 256 x 256 frame), whatever the
frame size. A window in which nothing moves gives no ToM sample (counted, not written).

On disk: ``DIR/traces/<episode_id>.parquet``, one row per labelled window:

============  ==============================  ==============================================
column        type                            meaning
============  ==============================  ==============================================
step          int32                           the window's first step in the episode
image         binary                          first frame with the marks drawn (PNG, RGB)
question      string                          ToM user turn, without the ``<image>`` token
answer        string                          ToM answer (Magma's format)
instruction   string                          the instruction at ``step``
mark_ids      list<int32>                     every mark drawn (sorted)
trace_ids     list<int32>                     the moved marks, in answer order
traces        list<list<fixed_size_list<2>>>  per moved mark: its future grid cells (x, y)
============  ==============================  ==============================================

with key-value metadata ``magma_ros.traces`` (JSON: episode, labelling config, counts).
Read them back with :func:`load_trace_samples`. ROS-free.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from magma_ros.codecs import (
    GRID_SIZE,
    ImageSize,
    Mark,
    TracePoints,
    build_tom_query,
    draw_marks,
    draw_traces,
    format_traces,
    parse_traces,
    pixel_point_to_grid,
    place_marks_at_points,
    place_marks_on_grid,
)
from magma_ros.model.config import as_regions
from magma_ros.model.errors import ConfigError
from magma_ros.training.progress import progress_bar
from magma_ros.training.records import DATASET_FILE, TRACES_DIR, DatasetError, TraceSample
from magma_ros.training.tracking import (
    PointTracker,
    PointTracks,
    TrackerConfig,
    build_tracker,
    check_frames,
    grid_queries,
)

__all__ = [
    "TRACES_METADATA_KEY",
    "LabelSummary",
    "TraceLabelConfig",
    "TraceLabelError",
    "WindowLabel",
    "kmeans_representatives",
    "label_dataset",
    "label_episode",
    "label_window",
    "load_trace_samples",
    "mean_steps",
    "remove_camera_motion",
    "render_preview",
    "window_starts",
    "write_trace_labels",
]

TRACES_METADATA_KEY = b"magma_ros.traces"
PREVIEW_DIR = "preview"


class TraceLabelError(DatasetError):
    """Trace labelling cannot run (bad configuration, unreadable dataset); the message says why."""


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TraceLabelError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TraceLabelError(f"{name} must be a positive number, got {value!r}")


MARK_LAYOUTS = ("kmeans", "grid")


@dataclass(frozen=True)
class TraceLabelConfig:
    """How ToM labels are made (defaults: Magma's recipe for robot data).

    Attributes:
        grid_size: the query grid is ``grid_size x grid_size`` points.
        window: frames per window (the first frame plus up to ``window - 1`` future steps).
        stride: steps between the starts of consecutive windows.
        min_window: shortest window labelled at an episode's end (frames).
        visible_fraction: a point must be visible in more than this fraction of the frames.
        camera_motion_fraction, camera_motion_step: camera motion is removed when more than
            ``camera_motion_fraction`` of the points move more than ``camera_motion_step``
            (256-grid px per step, on average).
        homography_threshold: RANSAC reprojection threshold, 256-grid px.
        foreground_step: mean step (256-grid px) above which a point is foreground
            (1 for robot data, 2 for video).
        moving_clusters, static_clusters: inclusive ranges of the k-means cluster counts,
            drawn per window.
        trace_tokens: wrap the answer's traces in ``<trace_start>`` ... ``<trace_end>``.
        marks: ``"kmeans"`` (Magma's recipe, steps 1-6 above) or ``"grid"``: the marks the
            policy node's trace query draws (``mark_grid`` rows x cols at the centres of equal
            cells, ids in reading order); each mark's own point is tracked and the marks that
            move are the answer. A model that reads marks poorly (a tiny one) then only has to
            learn which of a fixed set of places move, and it is asked at serving time exactly
            what it was trained on.
        mark_grid: rows, cols of the ``"grid"`` marks.
        mark_radius: ``"grid"`` marks with a point tracker: a mark moves with the tracked points
            of the ``grid_size`` grid within this distance (256-grid px) when at least half of
            them move (median of their motion); a tracker loses the mark's own point on an
            untextured surface such as a robot link, the edges around it it keeps. 0: track
            the mark's own point (exact tracks, e.g. the simulator's).
        ignore_regions: boxes ``(x0, y0, x1, y1)``, fractions of the frame, whose content is not
            the scene's own motion (e.g. the sim's wrist inset, :data:`magma_ros.sim.config.INSET_REGION`,
            a second camera pasted into the frame): no tracked point inside one is a mark's or
            counts towards one, so no mark there is ever in an answer; ``"grid"`` marks inside one
            are still drawn (the policy node draws them) and so are labelled as not moving.
        seed: seeds every random choice (cluster counts, k-means, mark ids) per window.
        tracker: which point tracker.
    """

    grid_size: int = 15
    window: int = 16
    stride: int = 4
    min_window: int = 4
    visible_fraction: float = 0.5
    camera_motion_fraction: float = 0.8
    camera_motion_step: float = 1.0
    homography_threshold: float = 4.0
    foreground_step: float = 1.0
    moving_clusters: tuple[int, int] = (2, 5)
    static_clusters: tuple[int, int] = (4, 14)
    trace_tokens: bool = False
    marks: str = "kmeans"
    mark_grid: tuple[int, int] = (3, 4)
    mark_radius: float = 20.0
    ignore_regions: tuple[tuple[float, float, float, float], ...] = ()
    seed: int = 0
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        _positive_int("grid_size", self.grid_size)
        _positive_int("window", self.window, 2)
        _positive_int("stride", self.stride)
        _positive_int("min_window", self.min_window, 2)
        if self.min_window > self.window:
            raise TraceLabelError(f"min_window {self.min_window} is longer than window {self.window}")
        for name in ("camera_motion_step", "homography_threshold", "foreground_step"):
            _positive(name, getattr(self, name))
        for name in ("visible_fraction", "camera_motion_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise TraceLabelError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("moving_clusters", "static_clusters"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or not all(isinstance(v, int) and v >= 0 for v in value) or value[0] > value[1]:
                raise TraceLabelError(f"{name} must be a (low, high) pair of integers, low <= high, got {value!r}")
            object.__setattr__(self, name, value)
        if self.marks not in MARK_LAYOUTS:
            raise TraceLabelError(f"marks must be one of {MARK_LAYOUTS}, got {self.marks!r}")
        grid = tuple(self.mark_grid)
        if len(grid) != 2 or not all(isinstance(v, int) and v >= 1 for v in grid):
            raise TraceLabelError(f"mark_grid must be a (rows, cols) pair of positive integers, got {grid!r}")
        object.__setattr__(self, "mark_grid", grid)
        if not (isinstance(self.mark_radius, (int, float)) and 0.0 <= self.mark_radius < GRID_SIZE):
            raise TraceLabelError(f"mark_radius must be in [0, {GRID_SIZE}), got {self.mark_radius!r}")
        try:
            object.__setattr__(self, "ignore_regions", as_regions(self.ignore_regions, "ignore_regions"))
        except ConfigError as err:
            raise TraceLabelError(str(err)) from None
        if self.moving_clusters[1] < 1:
            raise TraceLabelError("moving_clusters must allow at least one moving mark")
        if not isinstance(self.tracker, TrackerConfig):
            raise TraceLabelError(f"tracker must be a TrackerConfig, got {type(self.tracker).__name__}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, recorded in each traces file."""
        data = asdict(self)
        data["tracker"] = {"name": self.tracker.name,
                           "weights": str(self.tracker.weights) if self.tracker.weights else None}
        return data


# --- the steps of the recipe -------------------------------------------------------------


def mean_steps(points: NDArray[np.float64], visible: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(N,) mean length of each point's steps between consecutive frames where it is visible (0 if none)."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=-1)
    both = visible[1:] & visible[:-1]
    count = both.sum(axis=0)
    total = np.where(both, steps, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def remove_camera_motion(points: NDArray[np.float64], visible: NDArray[np.bool_], threshold: float = 4.0
                         ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Map every frame's points back onto the first frame with a RANSAC homography.

    Per frame ``t``, the homography is fitted from the points visible in frames 0 and ``t``
    (RANSAC, reprojection ``threshold`` in the points' units) and applied to all of frame
    ``t``'s points, so the background comes to rest and only motion relative to it remains.
    A frame with fewer than 4 such points, or no homography, has its points made invisible.
    Returns corrected ``(points, visible)``; the inputs are not modified.
    """
    out = np.array(points, dtype=np.float64, copy=True)
    vis = np.array(visible, dtype=bool, copy=True)
    for t in range(1, out.shape[0]):
        both = vis[t] & vis[0]
        homography = None
        if np.count_nonzero(both) >= 4:
            homography, _ = cv2.findHomography(out[t, both], out[0, both], cv2.RANSAC, float(threshold))
        if homography is None or not np.all(np.isfinite(homography)):
            vis[t] = False
            continue
        out[t] = cv2.perspectiveTransform(out[t][None], homography)[0]
    return out, vis


def kmeans_representatives(features: NDArray[np.float64], k: int, rng: np.random.Generator,
                           iterations: int = 25) -> list[int]:
    """Indices of one member per k-means cluster of ``features`` (N, D): the member nearest its centre.

    k-means++ seeding from ``rng``; ``k`` is capped at the number of distinct rows. Ordered
    by cluster size, largest first.
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    k = min(int(k), n, len(np.unique(x, axis=0)))
    if k <= 0:
        return []
    centres = [x[int(rng.integers(n))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        if d2.sum() <= 0:
            break
        centres.append(x[int(rng.choice(n, p=d2 / d2.sum()))])
    c = np.asarray(centres)
    for _ in range(iterations):
        labels = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
        updated = np.array([x[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(len(c))])
        if np.allclose(updated, c):
            break
        c = updated
    labels = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    picks = []
    for j in np.argsort([-np.count_nonzero(labels == j) for j in range(len(c))], kind="stable"):
        members = np.flatnonzero(labels == j)
        if members.size:
            picks.append(int(members[np.argmin(((x[members] - c[j]) ** 2).sum(-1))]))
    return picks


@dataclass(frozen=True, eq=False)
class WindowLabel:
    """One labelled window: the training sample and what went into it (for previews and tests).

    ``instruction``: the task; ``marks``: every mark drawn (pixel positions in the first
    frame); ``moving_ids``: the marks in the answer; ``pixel_traces``: their future positions
    in pixels (after camera-motion removal), {id: (n, 2)}; ``camera_motion``: whether camera
    motion was removed; ``frames``: the window; ``sources``: {mark id: index of the query
    (:func:`window_queries`) the mark was placed at}.
    """

    sample: TraceSample
    instruction: str
    marks: tuple[Mark, ...]
    moving_ids: tuple[int, ...]
    pixel_traces: dict[int, NDArray[np.float64]]
    camera_motion: bool
    frames: NDArray[np.uint8]
    sources: dict[int, int]


def in_ignored_region(points: NDArray[np.float64], size: ImageSize, config: TraceLabelConfig) -> NDArray[np.bool_]:
    """(N,) whether each pixel point (N, 2) of a ``size`` frame lies in one of ``config.ignore_regions``."""
    fractions = np.asarray(points, np.float64).reshape(-1, 2) / np.array([size.width, size.height])
    inside = np.zeros(len(fractions), dtype=bool)
    for x0, y0, x1, y1 in config.ignore_regions:
        inside |= ((fractions[:, 0] >= x0) & (fractions[:, 0] <= x1)
                   & (fractions[:, 1] >= y0) & (fractions[:, 1] <= y1))
    return inside


def grid_marks(size: ImageSize, config: TraceLabelConfig) -> tuple[Mark, ...]:
    """The ``"grid"`` layout's marks on a frame of ``size``: the policy node's trace-query marks."""
    return place_marks_on_grid(size, *config.mark_grid, shuffle_ids=False)


def window_queries(size: ImageSize, config: TraceLabelConfig) -> NDArray[np.float64]:
    """(N, 2) pixel points tracked through a window: the ``grid_size`` grid, or with ``"grid"``
    marks and ``mark_radius`` 0 the centres of the marks, in :func:`grid_marks` order."""
    if config.marks == "grid" and config.mark_radius == 0:
        return np.array([[m.u, m.v] for m in grid_marks(size, config)], dtype=np.float64)
    return grid_queries(size, config.grid_size)


def _label_grid_marks(frames: NDArray[np.uint8], instruction: str, tracks: PointTracks, size: ImageSize,
                      config: TraceLabelConfig, episode_id: str, step: int) -> WindowLabel | str:
    """The ``"grid"`` layout: every grid mark is drawn; the marks whose own point moves are the answer."""
    marks = grid_marks(size, config)
    scale = np.array([GRID_SIZE / size.width, GRID_SIZE / size.height])
    visible_enough = (tracks.visible_fraction() > config.visible_fraction) & ~in_ignored_region(
        tracks.points[0], size, config)
    steps = mean_steps(tracks.points * scale, tracks.visible)
    queries = tracks.points[0] * scale
    current: dict[int, tuple[int, int]] = {}
    future: dict[int, list[tuple[int, int]]] = {}
    pixel_traces: dict[int, NDArray[np.float64]] = {}
    ignored = in_ignored_region(np.array([[m.u, m.v] for m in marks], np.float64), size, config)
    for index, mark in enumerate(marks):
        if ignored[index]:
            continue
        if config.mark_radius == 0:   # the mark's own point
            shown = np.flatnonzero(tracks.visible[:, index])
            last = int(shown[-1]) if shown.size else 0
            if not visible_enough[index] or steps[index] <= config.foreground_step or last < 1:
                continue
            path = tracks.points[1:last + 1, index]
        else:   # the tracked points around it
            near = np.hypot(*(queries - np.array(mark.grid, np.float64)).T) <= config.mark_radius
            around = np.flatnonzero(near & visible_enough)
            moving = around[steps[around] > config.foreground_step]
            if around.size == 0 or 2 * moving.size < around.size:
                continue
            motion = tracks.points[1:, moving] - tracks.points[0, moving]
            seen = tracks.visible[1:, moving]
            centre = np.array([mark.u, mark.v])
            path = np.array([centre + np.median(motion[t][seen[t]] if seen[t].any() else motion[t], axis=0)
                             for t in range(len(motion))])
        current[mark.id] = mark.grid
        future[mark.id] = [pixel_point_to_grid(u, v, size) for u, v in path]
        pixel_traces[mark.id] = path
    if not current:
        return "nothing moves"
    return _window_label(frames, instruction, marks, current, future, pixel_traces, False,
                         {m.id: i for i, m in enumerate(marks)}, size, config, episode_id, step)


def _window_label(frames: NDArray[np.uint8], instruction: str, marks: tuple[Mark, ...],
                  current: dict[int, tuple[int, int]], future: dict[int, list[tuple[int, int]]],
                  pixel_traces: dict[int, NDArray[np.float64]], camera_motion: bool, sources: dict[int, int],
                  size: ImageSize, config: TraceLabelConfig, episode_id: str, step: int) -> WindowLabel:
    """Magma's question and answer about the moved marks, the marked first frame, and the label."""
    answer = format_traces(current, future, trace_tokens=config.trace_tokens)
    mark_ids = sorted(m.id for m in marks)
    question = build_tom_query(instruction, max(len(f) for f in future.values()), mark_ids=mark_ids)
    check = parse_traces(answer, size)
    if not check.ok:  # the codec's own output must parse; anything else is a bug here
        raise TraceLabelError(f"episode {episode_id} step {step}: labelled answer does not parse: {check.errors}")
    sample = TraceSample(
        episode_id=episode_id, step=int(step), image=draw_marks(frames[0], marks), question=question,
        answer=answer, traces={i: np.asarray(f, dtype=np.int32).reshape(-1, 2) for i, f in future.items()})
    return WindowLabel(sample, instruction, marks, tuple(current), pixel_traces, camera_motion, frames, sources)


def _window_rng(seed: int, episode_id: str, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(episode_id.encode()), int(step)])


def label_window(frames: NDArray[np.uint8], instruction: str, tracker: PointTracker | None,
                 config: TraceLabelConfig | None = None, *, episode_id: str = "episode", step: int = 0,
                 tracks: PointTracks | None = None) -> WindowLabel | str:
    """Label one window of frames (T, H, W, 3) uint8 RGB; returns the label or why there is none.

    ``tracks`` (of :func:`window_queries`) may be passed to skip tracking (``tracker`` may then
    be None, e.g. exact tracks from a simulator). Deterministic for a given ``config.seed``,
    ``episode_id`` and ``step``.
    """
    config = config if config is not None else TraceLabelConfig()
    frames = check_frames(frames)
    if not isinstance(instruction, str) or not instruction.strip().rstrip(".").strip():
        return "no instruction"
    size = ImageSize(int(frames.shape[2]), int(frames.shape[1]))
    scale = np.array([GRID_SIZE / size.width, GRID_SIZE / size.height])
    queries = window_queries(size, config)
    if tracks is None:
        if tracker is None:
            raise TraceLabelError("label_window needs a tracker or the window's tracks")
        tracks = tracker.track(frames, queries)
    if config.marks == "grid":
        return _label_grid_marks(frames, instruction, tracks, size, config, episode_id, step)
    keep = (tracks.visible_fraction() > config.visible_fraction) & ~in_ignored_region(tracks.points[0], size, config)
    if np.count_nonzero(keep) < 2:
        return "fewer than 2 points visible in most frames"
    points, visible = tracks.points[:, keep], tracks.visible[:, keep]
    steps = mean_steps(points * scale, visible)
    camera_motion = bool(np.mean(steps > config.camera_motion_step) > config.camera_motion_fraction)
    if camera_motion:
        corrected, visible = remove_camera_motion(points * scale, visible, config.homography_threshold)
        points = corrected / scale
        steps = mean_steps(corrected, visible)
    moving = steps > config.foreground_step
    if not np.any(moving):
        return "nothing moves"
    rng = _window_rng(config.seed, episode_id, step)
    features = (points * scale).transpose(1, 0, 2).reshape(points.shape[1], -1)
    moving_index, static_index = np.flatnonzero(moving), np.flatnonzero(~moving)
    k_moving = int(rng.integers(config.moving_clusters[0], config.moving_clusters[1] + 1))
    k_static = int(rng.integers(config.static_clusters[0], config.static_clusters[1] + 1))
    chosen_moving = [int(moving_index[i]) for i in kmeans_representatives(features[moving_index], k_moving, rng)]
    chosen_static = ([int(static_index[i]) for i in kmeans_representatives(features[static_index], k_static, rng)]
                     if static_index.size else [])
    candidates = chosen_moving + chosen_static
    placement = place_marks_at_points(points[0, candidates], size, seed=int(rng.integers(2**31)))
    kept_queries = np.flatnonzero(keep)
    sources = {m.id: int(kept_queries[candidates[i]]) for m, i in zip(placement.marks, placement.source_indices,
                                                                      strict=True)}
    current: dict[int, tuple[int, int]] = {}
    future: dict[int, list[tuple[int, int]]] = {}
    pixel_traces: dict[int, NDArray[np.float64]] = {}
    for mark, source in sorted(zip(placement.marks, placement.source_indices, strict=True), key=lambda m: m[0].id):
        if source >= len(chosen_moving):
            continue
        point = candidates[source]
        shown = np.flatnonzero(visible[:, point])
        last = int(shown[-1]) if shown.size else 0
        if last < 1:
            continue
        path = points[1:last + 1, point]
        current[mark.id] = mark.grid
        future[mark.id] = [pixel_point_to_grid(u, v, size) for u, v in path]
        pixel_traces[mark.id] = path
    if not current:
        return "no moving mark could be placed"
    return _window_label(frames, instruction, tuple(placement.marks), current, future, pixel_traces, camera_motion,
                         sources, size, config, episode_id, step)


def window_starts(num_steps: int, config: TraceLabelConfig) -> list[int]:
    """First steps of the windows of an episode of ``num_steps`` steps."""
    return [s for s in range(0, max(num_steps, 0), config.stride) if num_steps - s >= config.min_window]


def label_episode(frames: Sequence[np.ndarray] | NDArray[np.uint8], instructions: str | Sequence[str],
                  tracker: PointTracker, config: TraceLabelConfig | None = None, *, episode_id: str = "episode",
                  on_window: Callable[[WindowLabel | str], None] | None = None) -> tuple[list[WindowLabel], Counter]:
    """Label every window of an episode; returns the labels and a count of windows skipped, by reason."""
    config = config if config is not None else TraceLabelConfig()
    video = np.asarray(frames)
    texts = [instructions] * len(video) if isinstance(instructions, str) else list(instructions)
    if len(texts) != len(video):
        raise TraceLabelError(f"episode {episode_id}: {len(video)} frames but {len(texts)} instructions")
    labels: list[WindowLabel] = []
    skipped: Counter[str] = Counter()
    for start in window_starts(len(video), config):
        result = label_window(video[start:start + config.window], texts[start], tracker, config,
                              episode_id=episode_id, step=start)
        if isinstance(result, str):
            skipped[result] += 1
        else:
            labels.append(result)
        if on_window is not None:
            on_window(result)
    return labels, skipped


# --- preview ---------------------------------------------------------------------------------


def render_preview(label: WindowLabel, scale: int = 2) -> NDArray[np.uint8]:
    """A picture of a label: the first frame with its marks and the traces as the answer states
    them (parsed back from the text), beside the window's last frame; upscaled ``scale`` x."""
    first, last = label.frames[0], label.frames[-1]
    height, width = first.shape[:2]
    big = (width * scale, height * scale)
    size = ImageSize(*big)
    marks = [Mark.at_pixel(m.id, m.u * scale, m.v * scale, size) for m in label.marks]
    parsed = parse_traces(label.sample.answer, size)
    traces = {i: TracePoints(t.grid, tuple((u, v) for u, v in t.pixels)) for i, t in parsed.traces.items()}
    starts = {m.id: m.pixel for m in marks}
    left = draw_traces(cv2.resize(first, big, interpolation=cv2.INTER_CUBIC), traces,
                       start_points={i: starts[i] for i in traces})
    left = draw_marks(left, marks)  # numbers on top of the traces, so they stay legible
    right = draw_traces(cv2.resize(last, big, interpolation=cv2.INTER_CUBIC), traces,
                        start_points={i: starts[i] for i in traces})
    panel = np.concatenate([left, np.full((big[1], 4, 3), 255, np.uint8), right], axis=1)
    caption = np.full((28, panel.shape[1], 3), 255, np.uint8)
    moved = ", ".join(str(i) for i in label.moving_ids)
    text = f"{label.sample.episode_id} step {label.sample.step}: {label.instruction} (moving: {moved})"[:120]
    cv2.putText(caption, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([panel, caption], axis=0)


# --- files -----------------------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is pinned in requirements/lock.txt
        raise TraceLabelError("pyarrow is required for trace labels (pip install pyarrow)") from err
    return pa, pq


def _encode_png(rgb: NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise TraceLabelError(f"OpenCV could not encode a {rgb.shape} image as PNG")
    return data.tobytes()


def _decode_png(data: bytes, where: str) -> NDArray[np.uint8]:
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TraceLabelError(f"{where}: stored image ({len(data)} bytes) does not decode")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def write_trace_labels(root: str | Path, episode_id: str, labels: Sequence[WindowLabel],
                       metadata: dict[str, Any] | None = None) -> Path:
    """Write ``root/traces/<episode_id>.parquet`` atomically (also with no labels: labelled, none found)."""
    pa, pq = _pyarrow()
    samples = [label.sample for label in labels]
    table = pa.table({
        "step": pa.array([s.step for s in samples], type=pa.int32()),
        "image": pa.array([_encode_png(s.image) for s in samples], type=pa.binary()),
        "question": pa.array([s.question for s in samples], type=pa.string()),
        "answer": pa.array([s.answer for s in samples], type=pa.string()),
        "instruction": pa.array([label.instruction for label in labels], type=pa.string()),
        "mark_ids": pa.array([sorted(m.id for m in label.marks) for label in labels], type=pa.list_(pa.int32())),
        "trace_ids": pa.array([list(s.traces) for s in samples], type=pa.list_(pa.int32())),
        "traces": pa.array([[t.tolist() for t in s.traces.values()] for s in samples],
                           type=pa.list_(pa.list_(pa.list_(pa.int32(), 2)))),
    })
    meta = {"episode_id": episode_id, **(metadata or {})}
    table = table.replace_schema_metadata({TRACES_METADATA_KEY: json.dumps(meta).encode()})
    path = Path(root) / TRACES_DIR / f"{episode_id}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def _episode_order(root: Path) -> list[str]:
    try:
        index = json.loads((root / DATASET_FILE).read_text(encoding="utf-8"))
        return [str(e["id"]) for e in index.get("episodes", []) if isinstance(e, dict) and "id" in e]
    except (OSError, ValueError, AttributeError):
        return []


def load_trace_samples(root: str | Path) -> list[TraceSample]:
    """Every ToM sample of a dataset (episodes in ``dataset.json`` order); [] when it has no labels.

    Raises :class:`TraceLabelError` naming the file for a traces file that cannot be read.
    """
    base = Path(root).expanduser()
    folder = base / TRACES_DIR
    if not folder.is_dir():
        return []
    files = {p.stem: p for p in folder.glob("*.parquet")}
    order = [e for e in _episode_order(base) if e in files] + sorted(set(files) - set(_episode_order(base)))
    _, pq = _pyarrow()
    samples: list[TraceSample] = []
    for episode_id in order:
        path = files[episode_id]
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:
            raise TraceLabelError(f"{path}: unreadable: {err}") from err
        missing = {"step", "image", "question", "answer", "trace_ids", "traces"} - set(table.column_names)
        if missing:
            raise TraceLabelError(f"{path}: not a traces file (missing columns {sorted(missing)})")
        columns = {name: table.column(name).to_pylist() for name in ("step", "image", "question", "answer",
                                                                      "trace_ids", "traces")}
        for row in range(table.num_rows):
            ids, traces = columns["trace_ids"][row], columns["traces"][row]
            if len(ids) != len(traces):
                raise TraceLabelError(f"{path}: row {row} has {len(ids)} trace ids but {len(traces)} traces")
            samples.append(TraceSample(
                episode_id=episode_id, step=int(columns["step"][row]),
                image=_decode_png(columns["image"][row], f"{path} row {row}"),
                question=columns["question"][row], answer=columns["answer"][row],
                traces={int(i): np.asarray(t, dtype=np.int32).reshape(-1, 2) for i, t in zip(ids, traces,
                                                                                             strict=True)}))
    return samples


# --- a whole dataset -------------------------------------------------------------------------


@dataclass
class LabelSummary:
    """What one ``label-traces`` run did."""

    root: Path
    labelled: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (episode, one-line reason)
    windows: int = 0
    samples: int = 0
    skipped_windows: Counter[str] = field(default_factory=Counter)
    camera_motion_windows: int = 0
    previews: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.windows / self.seconds if self.seconds > 0 else 0.0
        out = [f"{len(self.labelled)} episode(s) labelled: {self.samples} ToM sample(s) from {self.windows} "
               f"window(s) ({rate:.1f} windows/s); {len(self.already_done)} already labelled"]
        for reason, count in sorted(self.skipped_windows.items()):
            out.append(f"  {count} window(s) without a label: {reason}")
        if self.camera_motion_windows:
            out.append(f"  camera motion removed in {self.camera_motion_windows} window(s)")
        for episode, reason in self.failed:
            out.append(f"  episode {episode} not labelled: {reason}")
        if self.previews:
            out.append(f"  {len(self.previews)} preview image(s) in {self.previews[0].parent}")
        return out


def label_dataset(root: str | Path, config: TraceLabelConfig | None = None, *, preview: int = 0,
                  overwrite: bool = False, progress: bool = True,
                  report: Callable[[str], None] | None = None) -> LabelSummary:
    """Label every episode of the dataset at ``root`` that has no traces file yet (all with ``overwrite``).

    An episode that cannot be read is reported (``report``, one line) and skipped; the rest
    are labelled. ``preview`` writes the first N labelled windows as PNGs under
    ``root/traces/preview``. Raises :class:`TraceLabelError` when ``root`` is not a dataset or
    the tracker is unavailable.
    """
    import time

    from magma_ros.training.dataset import TrajectoryDataset

    config = config if config is not None else TraceLabelConfig()
    if isinstance(preview, bool) or not isinstance(preview, int) or preview < 0:
        raise TraceLabelError(f"preview must be a non-negative integer, got {preview!r}")
    start_time = time.perf_counter()
    data = TrajectoryDataset(root)
    tracker = build_tracker(config.tracker)
    base = data.root
    summary = LabelSummary(base)
    todo = []
    for episode_id in data.episode_ids:
        if not overwrite and (base / TRACES_DIR / f"{episode_id}.parquet").is_file():
            summary.already_done.append(episode_id)
        else:
            todo.append(episode_id)
    total = sum(len(window_starts(data.episode_length(e), config)) for e in todo)
    bar = progress_bar(total, progress, "window", "label-traces")
    preview_dir = base / TRACES_DIR / PREVIEW_DIR
    try:
        for episode_id in todo:
            try:
                steps = data.episode(episode_id)
            except DatasetError as err:
                reason = str(err).splitlines()[0]
                summary.failed.append((episode_id, reason))
                if report is not None:
                    report(f"episode {episode_id} skipped: {reason}")
                bar.update(len(window_starts(data.episode_length(episode_id), config)))
                continue
            frames = np.stack([s.image for s in steps])
            labels, skipped = label_episode(frames, [s.instruction for s in steps], tracker, config,
                                            episode_id=episode_id, on_window=lambda _: bar.update(1))
            summary.windows += sum(skipped.values()) + len(labels)
            summary.samples += len(labels)
            summary.skipped_windows.update(skipped)
            summary.camera_motion_windows += sum(label.camera_motion for label in labels)
            for label in labels:
                if len(summary.previews) >= preview:
                    break
                preview_dir.mkdir(parents=True, exist_ok=True)
                path = preview_dir / f"{episode_id}_step{label.sample.step:04d}.png"
                cv2.imwrite(str(path), render_preview(label)[:, :, ::-1])
                summary.previews.append(path)
            write_trace_labels(base, episode_id, labels, {
                "config": config.as_dict(), "windows": sum(skipped.values()) + len(labels),
                "skipped_windows": dict(skipped)})
            summary.labelled.append(episode_id)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start_time
    return summary


