"""Point tracking over short windows of frames, the first step of Trace-of-Mark labels.

A tracker follows query points given in a window's first frame through the window::

    tracker = build_tracker(TrackerConfig())            # OpenCV Lucas-Kanade, no weights
    tracks = tracker.track(frames, grid_queries((256, 256), 15))
    tracks.points   # (T, N, 2) pixel (u, v); frame 0 holds the queries
    tracks.visible  # (T, N) bool

Trackers:

* ``lk`` (default): OpenCV pyramidal Lucas-Kanade, frame to frame, with a forward-backward
  check (a point whose backward track misses where it came from by more than
  ``fb_threshold_px`` is lost from then on) and a rule for flat, textureless windows that
  LK cannot lock on to. No weights, OpenCV's Apache-2.0 licence.
* ``cotracker3``: Meta's CoTracker3 (``pip install`` the ``cotracker`` package from its
  repository, download ``scaled_offline.pth`` yourself). Licence CC-BY-NC 4.0, code and
  weights: not for commercial use.
* ``bootstapir``: DeepMind's BootsTAPIR, PyTorch port (the ``tapnet`` package and a
  ``bootstapir_checkpoint_v2.pt``). Apache-2.0.
* ``package.module:factory``: any other tracker (TAPNext, your own): ``factory(config)``
  returns an object with ``name`` and ``track(frames, queries) -> PointTracks``.

Optional trackers are never required and nothing is downloaded here: selecting one whose
package or weights are missing raises :class:`TrackerUnavailableError` saying what to install.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from magma_ros.codecs.grid import ImageSize, as_image_size

__all__ = [
    "BUILTIN_TRACKERS",
    "LucasKanadeConfig",
    "LucasKanadeTracker",
    "PointTracker",
    "PointTracks",
    "TrackerConfig",
    "TrackerUnavailableError",
    "TrackingError",
    "build_tracker",
    "check_frames",
    "grid_queries",
]


class TrackingError(ValueError):
    """Bad frames, queries or tracker configuration; the message names the value."""


class TrackerUnavailableError(TrackingError):
    """A selected optional tracker is not installed, or its weights are missing."""


@dataclass(frozen=True, eq=False)
class PointTracks:
    """Tracks of N points over T frames: ``points`` (T, N, 2) float64 pixels (u, v), ``visible`` (T, N) bool.

    Where a point is not visible its position is the tracker's best guess (the last
    tracked position for ``lk``), never NaN.
    """

    points: NDArray[np.float64]
    visible: NDArray[np.bool_]

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64)
        visible = np.asarray(self.visible, dtype=bool)
        if points.ndim != 3 or points.shape[2] != 2:
            raise TrackingError(f"track points must have shape (T, N, 2), got {points.shape}")
        if visible.shape != points.shape[:2]:
            raise TrackingError(f"visibility shape {visible.shape} does not match points {points.shape[:2]}")
        if not np.all(np.isfinite(points)):
            raise TrackingError("track points must be finite")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "visible", visible)

    @property
    def num_frames(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.points.shape[1])

    def visible_fraction(self) -> NDArray[np.float64]:
        """(N,) fraction of the window's frames in which each point is visible."""
        return self.visible.mean(axis=0) if self.num_frames else np.zeros(self.num_points)


@runtime_checkable
class PointTracker(Protocol):
    """Anything that tracks query points of a window's first frame through the window."""

    name: str

    def track(self, frames: ArrayLike, queries: ArrayLike) -> PointTracks:
        """``frames``: (T, H, W, 3) uint8 RGB; ``queries``: (N, 2) pixels (u, v) in frame 0."""
        ...


def check_frames(frames: ArrayLike | Sequence[np.ndarray]) -> NDArray[np.uint8]:
    """``frames`` as one (T, H, W, 3) uint8 array; :class:`TrackingError` if they are not RGB frames of one size."""
    try:
        array = np.asarray(frames)
    except ValueError as err:  # ragged list of frames of different sizes
        raise TrackingError(f"frames must all have the same size: {err}") from err
    if array.ndim != 4 or array.shape[3] != 3 or array.shape[0] < 1:
        raise TrackingError(f"frames must be a (T, H, W, 3) RGB array with T >= 1, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise TrackingError(f"frames must be uint8 RGB, got dtype {array.dtype}")
    if min(array.shape[1:3]) < 8:
        raise TrackingError(f"frames of {array.shape[2]}x{array.shape[1]} px are too small to track in")
    return np.ascontiguousarray(array)


def check_queries(queries: ArrayLike, size: ImageSize) -> NDArray[np.float64]:
    """``queries`` as an (N, 2) float64 array of finite pixels inside an image of ``size``."""
    try:
        q = np.asarray(queries, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TrackingError(f"queries must be an (N, 2) array of pixel positions: {err}") from err
    if q.ndim != 2 or q.shape[1] != 2:
        raise TrackingError(f"queries must have shape (N, 2), got {q.shape}")
    inside = np.isfinite(q).all(axis=1) & (q[:, 0] >= 0) & (q[:, 0] <= size.width - 1)
    inside &= (q[:, 1] >= 0) & (q[:, 1] <= size.height - 1)
    if not inside.all():
        bad = q[np.flatnonzero(~inside)[0]].tolist()
        raise TrackingError(f"query {bad} is not a finite pixel inside the {size.width}x{size.height} image")
    return q


def grid_queries(image_size: tuple[int, int] | ImageSize, grid_size: int = 15) -> NDArray[np.float64]:
    """An ``grid_size x grid_size`` grid of query pixels, cell centres rounded to whole pixels, row-major.

    Returns (grid_size**2, 2) float64 pixel positions (u, v).
    """
    size = as_image_size(image_size)
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 1:
        raise TrackingError(f"grid size must be a positive integer, got {grid_size!r}")
    if grid_size > min(size):
        raise TrackingError(f"a {grid_size}x{grid_size} grid does not fit a {size.width}x{size.height} image")
    us = np.floor((np.arange(grid_size) + 0.5) * size.width / grid_size)
    vs = np.floor((np.arange(grid_size) + 0.5) * size.height / grid_size)
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], axis=1)


# --- Lucas-Kanade ----------------------------------------------------------------------


@dataclass(frozen=True)
class LucasKanadeConfig:
    """Parameters of the default tracker.

    Attributes:
        window_size: side of the LK integration window, pixels (odd, >= 5).
        pyramid_levels: extra pyramid levels (0 = no pyramid); 3 follows motions of ~30 px/frame.
        max_iterations, epsilon: LK stopping criteria per level.
        fb_threshold_px: largest forward-backward disagreement of a kept point, pixels.
        min_eigen_threshold: OpenCV's minimum eigenvalue of the window's structure tensor;
            a window below it is flat (no texture to lock on to).
        hold_flat_points: how flat windows are handled. True: a flat point whose colour is
            unchanged stays where it is and visible (a uniform table top did not move); one
            whose colour changed takes the coarse pyramid levels' estimate when that is
            forward-backward consistent and shows the point's colour, else it is lost.
            False: every flat point is lost, as OpenCV reports it.
        color_tolerance: largest change (0-255, any channel) of a flat point's mean colour
            over a 7 x 7 patch for it to count as unchanged.
        follow_radius_px: after a point is lost, its position keeps following the median
            motion of the points that started within this distance of it, were still tracked,
            and had moved like it (within ``follow_tolerance_px``) up to the loss; it stays
            invisible. 0 holds lost points where they were lost.
        follow_tolerance_px: see ``follow_radius_px``.
    """

    window_size: int = 21
    pyramid_levels: int = 3
    max_iterations: int = 30
    epsilon: float = 0.01
    fb_threshold_px: float = 1.0
    min_eigen_threshold: float = 1e-4
    hold_flat_points: bool = True
    color_tolerance: float = 8.0
    follow_radius_px: float = 40.0
    follow_tolerance_px: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.window_size, int) and self.window_size >= 5 and self.window_size % 2 == 1):
            raise TrackingError(f"lk.window_size must be an odd integer >= 5, got {self.window_size!r}")
        if not (isinstance(self.pyramid_levels, int) and 0 <= self.pyramid_levels <= 8):
            raise TrackingError(f"lk.pyramid_levels must be an integer in [0, 8], got {self.pyramid_levels!r}")
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 1):
            raise TrackingError(f"lk.max_iterations must be a positive integer, got {self.max_iterations!r}")
        for name in ("epsilon", "fb_threshold_px", "min_eigen_threshold", "color_tolerance", "follow_tolerance_px"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise TrackingError(f"lk.{name} must be a positive number, got {value!r}")
        if not (isinstance(self.follow_radius_px, (int, float)) and math.isfinite(self.follow_radius_px)
                and self.follow_radius_px >= 0):
            raise TrackingError(f"lk.follow_radius_px must be >= 0, got {self.follow_radius_px!r}")


_PATCH = 7  # side of the patch whose mean colour identifies a flat point


class LucasKanadeTracker:
    """OpenCV pyramidal Lucas-Kanade, frame to frame, with forward-backward checks.

    A point is lost (invisible for the rest of the window) when OpenCV fails to track it,
    when it leaves the image, or when its backward track misses where it came from by more
    than ``fb_threshold_px``; its position then follows similar nearby points, or stays.
    Flat, textureless windows (a rendered table top, a white wall) are handled as
    :class:`LucasKanadeConfig` describes.
    """

    name = "lk"

    def __init__(self, config: LucasKanadeConfig | None = None) -> None:
        self.config = config if config is not None else LucasKanadeConfig()
        c = self.config
        self._params: dict[str, Any] = {
            "winSize": (c.window_size, c.window_size),
            "maxLevel": c.pyramid_levels,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, c.max_iterations, c.epsilon),
            "minEigThreshold": c.min_eigen_threshold,
            "flags": cv2.OPTFLOW_LK_GET_MIN_EIGENVALS,
        }

    def _flow(self, a: np.ndarray, b: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions in ``b`` of ``points`` of ``a``, OpenCV's status, and each window's minimum eigenvalue."""
        p = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 1, 2)
        out, status, min_eigen = cv2.calcOpticalFlowPyrLK(a, b, p, None, **self._params)
        return out.reshape(-1, 2).astype(np.float64), status.reshape(-1).astype(bool), min_eigen.reshape(-1)

    @staticmethod
    def _colors(patch_means: np.ndarray, points: np.ndarray) -> np.ndarray:
        height, width = patch_means.shape[:2]
        u = np.clip(np.rint(points[:, 0]).astype(int), 0, width - 1)
        v = np.clip(np.rint(points[:, 1]).astype(int), 0, height - 1)
        return patch_means[v, u].astype(np.float64)

    def track(self, frames: ArrayLike, queries: ArrayLike) -> PointTracks:
        video = check_frames(frames)
        size = ImageSize(int(video.shape[2]), int(video.shape[1]))
        q = check_queries(queries, size)
        c = self.config
        grays = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video]
        means = [cv2.blur(frame, (_PATCH, _PATCH)) for frame in video] if c.hold_flat_points else []
        reference = self._colors(means[0], q) if c.hold_flat_points else None
        n_frames, n = len(grays), q.shape[0]
        points = np.repeat(q[None], n_frames, axis=0)
        visible = np.zeros((n_frames, n), dtype=bool)
        visible[0] = True
        alive = np.ones(n, dtype=bool)
        limit = np.array([size.width - 1, size.height - 1], dtype=np.float64)
        for t in range(1, n_frames):
            points[t] = points[t - 1]
            index = np.flatnonzero(alive)
            if index.size == 0:
                continue
            prev = points[t - 1, index]
            forward, ok, min_eigen = self._flow(grays[t - 1], grays[t], prev)
            backward, ok_back, _ = self._flow(grays[t], grays[t - 1], forward)
            consistent = np.linalg.norm(backward - prev, axis=1) <= c.fb_threshold_px
            ok &= ok_back & consistent
            if reference is not None:
                flat = min_eigen < c.min_eigen_threshold
                ref = reference[index]
                unchanged = np.abs(self._colors(means[t], prev) - ref).max(axis=1) <= c.color_tolerance
                held = flat & unchanged
                forward[held] = prev[held]
                shows_point = np.abs(self._colors(means[t], forward) - ref).max(axis=1) <= c.color_tolerance
                ok |= held | (flat & ~unchanged & consistent & shows_point)
            ok &= np.all((forward >= 0) & (forward <= limit), axis=1)
            alive[index[~ok]] = False
            points[t, index[ok]] = forward[ok]
            visible[t] = alive
        if c.follow_radius_px > 0:
            points = self._follow_neighbours(points, visible)
        return PointTracks(points, visible)

    def _follow_neighbours(self, points: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """Move each lost point on with the median motion of nearby points that moved like it."""
        c = self.config
        n_frames = points.shape[0]
        # Points are lost for good, so visibility is a prefix: its length - 1 is the last tracked frame.
        last = visible.sum(axis=0) - 1
        out = points.copy()
        start_gap = np.linalg.norm(points[0][:, None] - points[0][None], axis=-1)
        for i in np.flatnonzero(last < n_frames - 1):
            lost = int(last[i])
            moved = points[lost] - points[0]
            similar = np.linalg.norm(moved - moved[i], axis=1) <= c.follow_tolerance_px
            group = np.flatnonzero((last > lost) & (start_gap[i] <= c.follow_radius_px) & similar)
            if group.size < 2:
                continue
            motion = np.median(points[lost + 1:, group] - points[lost, group][None], axis=1)
            out[lost + 1:, i] = points[lost, i] + motion
        return out


# --- optional learned trackers ----------------------------------------------------------


def _require_weights(name: str, weights: Path | None, what: str) -> Path:
    if weights is None:
        raise TrackerUnavailableError(f"tracker {name!r} needs its weights: pass --tracker-weights PATH ({what})")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TrackerUnavailableError(f"tracker {name!r}: weights file {path} does not exist ({what})")
    return path


def _import_optional(module: str, name: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TrackerUnavailableError(
            f"tracker {name!r} is not installed ({module} cannot be imported: {err}); {install}, "
            f"or use the default tracker 'lk'"
        ) from err


class CoTrackerTracker:
    """CoTracker3 (offline model) through the ``cotracker`` package's ``CoTrackerPredictor``.

    Licence CC-BY-NC 4.0 (code and weights): non-commercial use only.
    """

    name = "cotracker3"

    def __init__(self, weights: Path | None, device: str = "cpu") -> None:
        predictor = _import_optional(
            "cotracker.predictor", self.name,
            "install it from https://github.com/facebookresearch/co-tracker (CC-BY-NC 4.0, non-commercial)")
        path = _require_weights(self.name, weights, "CoTracker3's scaled_offline.pth, downloaded by you")
        import torch

        self._torch = torch
        self._device = device
        self._model = predictor.CoTrackerPredictor(checkpoint=str(path)).to(device).eval()

    def track(self, frames: ArrayLike, queries: ArrayLike) -> PointTracks:
        video = check_frames(frames)
        q = check_queries(queries, ImageSize(int(video.shape[2]), int(video.shape[1])))
        torch = self._torch
        clip = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float().to(self._device)
        query = torch.from_numpy(np.concatenate([np.zeros((q.shape[0], 1)), q], axis=1))[None].float()
        with torch.no_grad():
            tracks, visibility = self._model(clip, queries=query.to(self._device))
        points = tracks[0].cpu().numpy().astype(np.float64)
        return PointTracks(np.nan_to_num(points), visibility[0].cpu().numpy() > 0.5)


class BootsTapirTracker:
    """BootsTAPIR through the ``tapnet`` package's PyTorch TAPIR (run at 256 x 256). Apache-2.0."""

    name = "bootstapir"
    resolution = 256

    def __init__(self, weights: Path | None, device: str = "cpu") -> None:
        model = _import_optional(
            "tapnet.torch.tapir_model", self.name,
            "install tapnet from https://github.com/google-deepmind/tapnet (Apache-2.0)")
        path = _require_weights(self.name, weights, "bootstapir_checkpoint_v2.pt, downloaded by you")
        import torch

        self._torch = torch
        self._device = device
        self._model = model.TAPIR(pyramid_level=1)
        self._model.load_state_dict(torch.load(str(path), map_location="cpu"))
        self._model = self._model.to(device).eval()

    def track(self, frames: ArrayLike, queries: ArrayLike) -> PointTracks:
        video = check_frames(frames)
        size = ImageSize(int(video.shape[2]), int(video.shape[1]))
        q = check_queries(queries, size)
        torch = self._torch
        r = self.resolution
        scale = np.array([r / size.width, r / size.height])
        resized = np.stack([cv2.resize(f, (r, r), interpolation=cv2.INTER_AREA) for f in video])
        clip = torch.from_numpy(resized).float().div(127.5).sub(1.0)[None].to(self._device)
        qs = q * scale
        query = np.stack([np.zeros(q.shape[0]), qs[:, 1], qs[:, 0]], axis=1)  # (t, y, x)
        with torch.no_grad():
            out = self._model(clip, torch.from_numpy(query)[None].float().to(self._device))
        tracks = out["tracks"][0].cpu().numpy().transpose(1, 0, 2) / scale
        occluded = torch.sigmoid(out["occlusion"][0]).cpu().numpy()
        uncertain = torch.sigmoid(out["expected_dist"][0]).cpu().numpy()
        visible = ((1 - occluded) * (1 - uncertain) > 0.5).T
        return PointTracks(np.nan_to_num(tracks.astype(np.float64)), visible)


# --- selection by configuration ---------------------------------------------------------

BUILTIN_TRACKERS: tuple[str, ...] = ("lk", "cotracker3", "bootstapir")
"""Names :func:`build_tracker` knows; ``package.module:factory`` selects any other."""


@dataclass(frozen=True)
class TrackerConfig:
    """Which tracker labels traces.

    Attributes:
        name: ``lk`` (default), ``cotracker3``, ``bootstapir`` or ``package.module:factory``.
        weights: checkpoint file of a learned tracker (never downloaded by magma_ros).
        device: torch device of a learned tracker.
        lucas_kanade: parameters of ``lk``.
    """

    name: str = "lk"
    weights: Path | None = None
    device: str = "cpu"
    lucas_kanade: LucasKanadeConfig = field(default_factory=LucasKanadeConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TrackingError(f"tracker name must be a non-empty string, got {self.name!r}")
        if self.name not in BUILTIN_TRACKERS and ":" not in self.name:
            raise TrackingError(
                f"unknown tracker {self.name!r}; choose one of {', '.join(BUILTIN_TRACKERS)} "
                f"or give a plug-in as package.module:factory"
            )
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))


def build_tracker(config: TrackerConfig | None = None) -> PointTracker:
    """The tracker ``config`` names; :class:`TrackerUnavailableError` when it is not installed."""
    config = config if config is not None else TrackerConfig()
    if config.name == "lk":
        return LucasKanadeTracker(config.lucas_kanade)
    if config.name == "cotracker3":
        return CoTrackerTracker(config.weights, config.device)
    if config.name == "bootstapir":
        return BootsTapirTracker(config.weights, config.device)
    module_name, _, attr = config.name.partition(":")
    module = _import_optional(module_name, config.name, f"install the package that provides {module_name}")
    factory: Callable[[TrackerConfig], Any] | None = getattr(module, attr, None)
    if not callable(factory):
        raise TrackerUnavailableError(f"tracker plug-in {config.name!r}: {module_name} has no callable {attr!r}")
    tracker = factory(config)
    if not isinstance(tracker, PointTracker):
        raise TrackingError(f"tracker plug-in {config.name!r} returned {type(tracker).__name__}, which has no "
                            f"name and track(frames, queries)")
    return tracker
