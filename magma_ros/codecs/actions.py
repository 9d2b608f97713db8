"""Magma's 7-DoF action tokens <-> binned values <-> metric actions.

Contract (magma-reference.md, "Actions (7-DoF)", checked against Microsoft's training
and SimplerEnv agent code; ``V`` = ``base_vocab_size``, the tokenizer's BASE vocabulary,
128000 for LLaMA-3, never the padded embedding size):

* Edges: ``linspace(-1, 1, 256)``; bin centres: the 255 midpoints (bin width ``2 / 255``).
* Binned value ``x`` per dimension (:meth:`ActionCodec.normalize`): where the statistics
  ``mask`` is true (dims 0..5 of the published sets and of any set without a mask)
  ``x = clip(2 * (a - q01) / (q99 - q01) - 1, -1, 1)``; a dimension with ``q99 == q01``
  gives ``x = 0``. Where the mask is false (always the gripper, dim 6) the raw value passes
  through unnormalized: a closed gripper label 0.0 is ``x = 0``, an open one 1.0 is ``x = 1``.
* Encoding (training labels): ``id = V - digitize(clip(x, -1, 1), edges)`` with numpy
  ``digitize`` semantics (``right=False``: ``edges[i-1] <= x < edges[i]`` gives ``i``). So
  ``x = -1`` -> ``V - 1``, ``x = 0`` (closed gripper) -> ``V - 128``, ``x >= 1`` (saturated,
  open gripper) -> ``V - 256``.
* Decoding: ``d = V - id``, bin ``clip(d - 1, 0, 254)``, binned value = that bin centre.
  Masked dims are un-normalized, ``a = 0.5 * (x + 1) * (q99 - q01) + q01``; unmasked dims
  (the gripper) ARE the bin centre, not remapped: closed ``V - 128`` -> 0.0, open
  ``V - 256`` -> ``1 - 1/255`` (0.996). Binarize the gripper at 0.5 (open iff > 0.5; see
  :mod:`magma_ros.codecs.gripper`).
* ``ActionCodec.token_range`` is the inclusive range of the 256 reserved ids
  ``[V - 256, V - 1]`` (127744 .. 127999 for LLaMA-3); ids outside it are errors. ``V - 256``
  and ``V - 255`` decode to the same bin (254), so ``encode(decode(id)) == id`` for every id
  but ``V - 256``, which re-encodes as ``V - 255``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .action_statistics import (
    ACTION_DIM,
    ACTION_DIM_NAMES,
    BRIDGE_ORIG,
    DEFAULT_MASK,
    GOOGLE_ROBOT,
    GRIPPER_DIM,
    PUBLISHED_STATISTICS,
    ActionStatistics,
    load_dataset_statistics,
    resolve_statistics,
)
from .errors import CodecError
from .gripper import GripperHysteresis, binarize_gripper, gripper_label

__all__ = [
    "ACTION_DIM",
    "ACTION_DIM_NAMES",
    "BRIDGE_ORIG",
    "DEFAULT_MASK",
    "DEFAULT_N_BINS",
    "GOOGLE_ROBOT",
    "GRIPPER_DIM",
    "LLAMA3_BASE_VOCAB_SIZE",
    "PUBLISHED_STATISTICS",
    "ActionCodec",
    "ActionStatistics",
    "DecodedAction",
    "GripperHysteresis",
    "TokenRange",
    "binarize_gripper",
    "gripper_label",
    "load_dataset_statistics",
    "resolve_statistics",
]

DEFAULT_N_BINS = 256
"""Number of bin edges (so 255 bins) in Magma's action discretization."""

LLAMA3_BASE_VOCAB_SIZE = 128000
"""Base vocabulary of the LLaMA-3 tokenizer (Magma-8B); read it from the tokenizer when you can."""


class TokenRange(NamedTuple):
    """Inclusive range ``lo .. hi`` of the token ids reserved for action bins."""

    lo: int
    hi: int

    def contains(self, token_id: int) -> bool:
        """Whether ``lo <= token_id <= hi``."""
        return self.lo <= token_id <= self.hi

    @property
    def size(self) -> int:
        """Number of ids in the range (``hi - lo + 1``)."""
        return self.hi - self.lo + 1


@dataclass(frozen=True, eq=False)
class DecodedAction:
    """Result of :meth:`ActionCodec.decode`; never silently wrong.

    ``token_ids``: the first (up to) 7 ids as given; an entry that was not an integer is -1.
    ``normalized``: (7,) bin centres in ``[-1, 1]``. ``action``: (7,) metric action
    (dx, dy, dz m; droll, dpitch, dyaw rad) and the gripper value, the bin centre itself
    (closed token -> 0.0, open token -> 0.996; open iff > 0.5).
    Both arrays are read-only and hold NaN at positions that could not be decoded (at
    every position when the number of ids is not 7).
    ``valid`` is True only when exactly 7 in-range integer ids were given; otherwise
    ``error`` says what was wrong (``""`` when valid). ``statistics``: name of the set used.
    """

    token_ids: tuple[int, ...]
    normalized: np.ndarray
    action: np.ndarray
    statistics: str
    valid: bool
    error: str

    @property
    def gripper(self) -> float:
        """Gripper value (the bin centre: ~0.0 closed, 0.996 open; open iff > 0.5), NaN if undecodable."""
        return float(self.action[GRIPPER_DIM])

    def require_valid(self) -> DecodedAction:
        """Return self when valid, else raise ``CodecError`` with the error text."""
        if not self.valid:
            raise CodecError(f"invalid action tokens {list(self.token_ids)}: {self.error}")
        return self


def _as_token_id(item: object) -> int | None:
    """Python int from an int-like scalar (int, numpy integer, 0-d array or tensor); None otherwise."""
    value = item
    if not isinstance(value, int) and hasattr(value, "item"):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _short_repr(item: object, limit: int = 40) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ActionCodec:
    """Converts between action token ids, normalized actions and metric actions.

    ``base_vocab_size``: the tokenizer's base vocabulary size (ids ``base - n_bins ..
    base - 1`` are the action bins). ``n_bins``: number of bin edges (256 for Magma).
    Raises ``CodecError`` for invalid sizes.
    """

    def __init__(self, base_vocab_size: int, n_bins: int = DEFAULT_N_BINS) -> None:
        for name, value in (("base_vocab_size", base_vocab_size), ("n_bins", n_bins)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise CodecError(f"{name} must be an integer, got {value!r}")
        if n_bins < 2:
            raise CodecError(f"n_bins must be at least 2, got {n_bins}")
        if base_vocab_size < n_bins:
            raise CodecError(f"base_vocab_size ({base_vocab_size}) must be at least n_bins ({n_bins})")
        self._base = int(base_vocab_size)
        self._n_bins = int(n_bins)
        edges = np.linspace(-1.0, 1.0, self._n_bins)
        centres = 0.5 * (edges[:-1] + edges[1:])
        edges.setflags(write=False)
        centres.setflags(write=False)
        self._edges = edges
        self._centres = centres

    def __repr__(self) -> str:
        return f"ActionCodec(base_vocab_size={self._base}, n_bins={self._n_bins})"

    @property
    def base_vocab_size(self) -> int:
        """The tokenizer's base vocabulary size."""
        return self._base

    @property
    def n_bins(self) -> int:
        """Number of bin edges (the number of bins is ``n_bins - 1``)."""
        return self._n_bins

    @property
    def bin_edges(self) -> np.ndarray:
        """The ``n_bins`` edges over ``[-1, 1]`` (read-only)."""
        return self._edges

    @property
    def bin_centres(self) -> np.ndarray:
        """The ``n_bins - 1`` bin centres (read-only); token ``id`` decodes to bin
        ``clip(base - id - 1, 0, n_bins - 2)``."""
        return self._centres

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalized units (``2 / (n_bins - 1)``)."""
        return 2.0 / (self._n_bins - 1)

    @property
    def token_range(self) -> TokenRange:
        """Inclusive range of the ``n_bins`` reserved ids: ``(base - n_bins, base - 1)``.

        Use it to constrain generation. :meth:`encode` produces every id of it (``lo`` for
        saturated values ``x >= 1``); ``lo`` decodes like ``lo + 1``.
        """
        return TokenRange(self._base - self._n_bins, self._base - 1)

    # --- normalized <-> tokens -------------------------------------------------------

    def normalized_to_tokens(self, normalized: Iterable[float] | np.ndarray) -> np.ndarray:
        """Token ids (int64, same shape) for binned values: ``base - digitize(clip(x, -1, 1), edges)``.

        numpy ``digitize`` semantics (``right=False``), so ``x >= 1`` gives ``base - n_bins``
        and ``x <= -1`` gives ``base - 1``. Raises ``CodecError`` for non-numeric or
        non-finite input.
        """
        try:
            values = np.asarray(normalized, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise CodecError(f"normalized values must be numbers: {err}") from err
        if not np.all(np.isfinite(values)):
            raise CodecError(f"normalized values must be finite, got {values.tolist()}")
        return (self._base - np.digitize(np.clip(values, -1.0, 1.0), self._edges, right=False)).astype(np.int64)

    def token_bins(self, token_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Bin index ``clip(base - id - 1, 0, n_bins - 2)`` (int64, same shape) of integer ids
        inside :attr:`token_range`; raises ``CodecError`` otherwise (see :meth:`tokens_to_normalized`)."""
        ids = np.asarray(token_ids)
        if ids.dtype.kind not in "iu":
            raise CodecError(f"token ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        lo, hi = self.token_range
        outside = ids[(ids < lo) | (ids > hi)]
        if outside.size:
            raise CodecError(
                f"token ids {outside[:8].tolist()} are outside the action token range [{lo}, {hi}]"
            )
        return np.clip(self._base - ids - 1, 0, self._n_bins - 2)

    def tokens_to_normalized(self, token_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Bin centres (float64, same shape) for integer token ids inside :attr:`token_range`.

        Strict: raises ``CodecError`` for non-integer ids or ids outside the range (use
        :meth:`decode` for a lenient, flagged result).
        """
        return self._centres[self.token_bins(token_ids)]

    # --- metric <-> normalized ----------------------------------------------------------

    @staticmethod
    def _actions(values: object, what: str) -> np.ndarray:
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise CodecError(f"{what} must be numbers: {err}") from err
        if arr.ndim == 0 or arr.shape[-1] != ACTION_DIM:
            raise CodecError(f"{what} must have shape (..., {ACTION_DIM}), got {arr.shape}")
        return arr

    @staticmethod
    def _check_stats(stats: ActionStatistics) -> None:
        if not isinstance(stats, ActionStatistics):
            raise CodecError(f"stats must be an ActionStatistics, got {type(stats).__name__}")

    def normalize(self, action: Iterable[float] | np.ndarray, stats: ActionStatistics) -> np.ndarray:
        """Binned values of metric actions of shape (..., 7), clipped to ``[-1, 1]``.

        Where ``stats.mask`` is true: ``2 * (a - q01) / (q99 - q01) - 1`` (0 when ``q99 == q01``);
        elsewhere (the gripper) the raw value. Raises ``CodecError`` for a wrong shape or
        non-finite values.
        """
        self._check_stats(stats)
        a = self._actions(action, "action")
        if not np.all(np.isfinite(a)):
            raise CodecError(f"action must be finite, got {a.tolist()}")
        q01, q99, mask = stats.q01_array, stats.q99_array, stats.mask_array
        span = q99 - q01
        scaled = np.divide(a - q01, span, out=np.full_like(a, 0.5), where=span > 0)
        out = np.where(mask, 2.0 * scaled - 1.0, a)
        return np.clip(out, -1.0, 1.0)

    def unnormalize(self, normalized: Iterable[float] | np.ndarray, stats: ActionStatistics) -> np.ndarray:
        """Metric actions of shape (..., 7) from binned values; NaN propagates.

        Where ``stats.mask`` is true: ``0.5 * (n + 1) * (q99 - q01) + q01`` (not clipped);
        elsewhere (the gripper) the value itself, not remapped. Raises ``CodecError`` for a
        wrong shape.
        """
        self._check_stats(stats)
        n = self._actions(normalized, "normalized action")
        q01, q99, mask = stats.q01_array, stats.q99_array, stats.mask_array
        return np.where(mask, 0.5 * (n + 1.0) * (q99 - q01) + q01, n)

    # --- metric <-> tokens -------------------------------------------------------------

    def encode(self, action: Iterable[float] | np.ndarray, stats: ActionStatistics) -> np.ndarray:
        """Token ids (int64, shape (..., 7)) for metric actions: training labels.

        Normalized dims outside q01..q99 and raw values outside ``[-1, 1]`` clip to the end
        bins. Raises ``CodecError`` for bad input.
        """
        return self.normalized_to_tokens(self.normalize(action, stats))

    def decode(self, token_ids: Iterable[object], stats: ActionStatistics) -> DecodedAction:
        """Decode 7 generated token ids; never raises on bad ids (only on a bad ``stats``).

        Wrong length, non-integer (e.g. NaN) or out-of-range ids give ``valid=False``, an
        ``error`` text and NaN at the affected positions; see :class:`DecodedAction`.
        """
        self._check_stats(stats)
        errors: list[str] = []
        try:
            items = list(token_ids)
        except TypeError:
            items = []
            errors.append(f"token ids must be a sequence, got {_short_repr(token_ids)}")
        if len(items) != ACTION_DIM and not errors:
            errors.append(f"expected {ACTION_DIM} action token ids, got {len(items)}")
        lo, hi = self.token_range
        ids: list[int] = []
        normalized = np.full(ACTION_DIM, np.nan)
        for i, item in enumerate(items[:ACTION_DIM]):
            token = _as_token_id(item)
            if token is None:
                errors.append(f"token {i} ({ACTION_DIM_NAMES[i]}) is not an integer id: {_short_repr(item)}")
                ids.append(-1)
                continue
            ids.append(token)
            if not lo <= token <= hi:
                errors.append(f"token {i} ({ACTION_DIM_NAMES[i]}) id {token} is outside the action "
                              f"token range [{lo}, {hi}]")
                continue
            normalized[i] = self._centres[min(max(self._base - token - 1, 0), self._n_bins - 2)]
        if len(items) != ACTION_DIM:
            normalized[:] = np.nan  # which ids belong to which dimension is unknown
        action = self.unnormalize(normalized, stats)
        normalized.setflags(write=False)
        action.setflags(write=False)
        return DecodedAction(
            token_ids=tuple(ids),
            normalized=normalized,
            action=action,
            statistics=stats.name,
            valid=not errors,
            error="; ".join(errors),
        )
