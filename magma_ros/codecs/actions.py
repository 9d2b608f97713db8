"""Magma's 7-DoF action tokens <-> normalized values <-> metric actions.

Contract (from the Magma / OpenVLA action scheme):

* 256 bin edges evenly spaced over ``[-1, 1]``; the 255 bin centres are the decoded
  normalized values (bin width ``2 / 255``).
* Normalized value ``n`` falls in bin ``d`` (``edges[d] <= n < edges[d+1]``, clipped to
  ``0 .. 254``; ``n = 1`` lands in bin 254) and is written as token id
  ``base_vocab_size - 1 - d``. ``base_vocab_size`` is the tokenizer's BASE vocabulary
  (128000 for LLaMA-3), never the (padded) embedding size.
* ``ActionCodec.token_range`` is the inclusive range of the 256 reserved ids
  ``[base - 256, base - 1]`` (127744 .. 127999 for LLaMA-3). Encoding only produces
  ``base - 255 .. base - 1``; the lowest id ``base - 256`` (bin 255) decodes like bin 254,
  as the reference implementation clips it. Ids outside the range are errors.
* Motion dims 0..5: ``n = 2 * (a - q01) / (q99 - q01) - 1`` (clipped to ``[-1, 1]``) and
  back ``a = 0.5 * (n + 1) * (q99 - q01) + q01``. A dimension with ``q99 == q01``
  normalizes to 0 and decodes to q01.
* Gripper dim 6 ignores the statistics: ``n = 2 * g - 1`` and back ``g = (n + 1) / 2``
  in ``[0, 1]``, 1 = open (see :mod:`magma_ros.codecs.gripper`).
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
    GOOGLE_ROBOT,
    GRIPPER_DIM,
    PUBLISHED_STATISTICS,
    ActionStatistics,
    load_dataset_statistics,
    resolve_statistics,
)
from .errors import CodecError
from .gripper import GripperHysteresis, gripper_from_normalized, gripper_to_normalized

__all__ = [
    "ACTION_DIM",
    "ACTION_DIM_NAMES",
    "BRIDGE_ORIG",
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
    "gripper_from_normalized",
    "gripper_to_normalized",
    "load_dataset_statistics",
    "resolve_statistics",
]

DEFAULT_N_BINS = 256
"""Number of bin edges (so 255 bins) in Magma's action discretization."""

LLAMA3_BASE_VOCAB_SIZE = 128000
"""Base vocabulary of the LLaMA-3 tokenizer (Magma-8B); read it from the tokenizer when you can."""

_MOTION = slice(0, GRIPPER_DIM)


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
    (dx, dy, dz m; droll, dpitch, dyaw rad) and gripper opening in ``[0, 1]``, 1 = open.
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
        """Gripper opening in ``[0, 1]`` (1 = open), NaN if undecodable."""
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
        """The ``n_bins - 1`` bin centres (read-only); bin ``d`` is token ``base - 1 - d``."""
        return self._centres

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalized units (``2 / (n_bins - 1)``)."""
        return 2.0 / (self._n_bins - 1)

    @property
    def token_range(self) -> TokenRange:
        """Inclusive range of the ``n_bins`` reserved ids: ``(base - n_bins, base - 1)``.

        Use it to constrain generation. ``lo`` itself never comes out of :meth:`encode`
        but decodes (like ``lo + 1``) when a model emits it.
        """
        return TokenRange(self._base - self._n_bins, self._base - 1)

    # --- normalized <-> tokens -------------------------------------------------------

    def normalized_to_tokens(self, normalized: Iterable[float] | np.ndarray) -> np.ndarray:
        """Token ids (int64, same shape) for normalized values; values are clipped to ``[-1, 1]``.

        Raises ``CodecError`` for non-numeric or non-finite input.
        """
        try:
            values = np.asarray(normalized, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise CodecError(f"normalized values must be numbers: {err}") from err
        if not np.all(np.isfinite(values)):
            raise CodecError(f"normalized values must be finite, got {values.tolist()}")
        bins = np.digitize(np.clip(values, -1.0, 1.0), self._edges) - 1
        bins = np.clip(bins, 0, self._n_bins - 2)
        return (self._base - 1 - bins).astype(np.int64)

    def tokens_to_normalized(self, token_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Bin centres (float64, same shape) for integer token ids inside :attr:`token_range`.

        Strict: raises ``CodecError`` for non-integer ids or ids outside the range (use
        :meth:`decode` for a lenient, flagged result).
        """
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
        bins = np.minimum(self._base - 1 - ids, self._n_bins - 2)
        return self._centres[bins]

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
        """Normalize metric actions of shape (..., 7) to ``[-1, 1]`` (clipped); see module docs.

        Raises ``CodecError`` for a wrong shape or non-finite values.
        """
        self._check_stats(stats)
        a = self._actions(action, "action")
        if not np.all(np.isfinite(a)):
            raise CodecError(f"action must be finite, got {a.tolist()}")
        q01, q99 = stats.q01_array[_MOTION], stats.q99_array[_MOTION]
        span = q99 - q01
        out = np.empty_like(a)
        scaled = np.divide(a[..., _MOTION] - q01, span, out=np.full_like(a[..., _MOTION], 0.5), where=span > 0)
        out[..., _MOTION] = 2.0 * scaled - 1.0
        out[..., GRIPPER_DIM] = 2.0 * np.clip(a[..., GRIPPER_DIM], 0.0, 1.0) - 1.0
        return np.clip(out, -1.0, 1.0)

    def unnormalize(self, normalized: Iterable[float] | np.ndarray, stats: ActionStatistics) -> np.ndarray:
        """Metric actions of shape (..., 7) from normalized values; NaN propagates.

        Dims 0..5: ``0.5 * (n + 1) * (q99 - q01) + q01`` (not clipped). Dim 6 (gripper):
        ``(n + 1) / 2`` clipped to ``[0, 1]``, 1 = open. Raises ``CodecError`` for a wrong shape.
        """
        self._check_stats(stats)
        n = self._actions(normalized, "normalized action")
        q01, q99 = stats.q01_array[_MOTION], stats.q99_array[_MOTION]
        out = np.empty_like(n)
        out[..., _MOTION] = 0.5 * (n[..., _MOTION] + 1.0) * (q99 - q01) + q01
        out[..., GRIPPER_DIM] = np.clip(0.5 * (n[..., GRIPPER_DIM] + 1.0), 0.0, 1.0)
        return out

    # --- metric <-> tokens -------------------------------------------------------------

    def encode(self, action: Iterable[float] | np.ndarray, stats: ActionStatistics) -> np.ndarray:
        """Token ids (int64, shape (..., 7)) for metric actions: training labels.

        Actions outside q01..q99 clip to the end bins. Raises ``CodecError`` for bad input.
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
            normalized[i] = self._centres[min(self._base - 1 - token, self._n_bins - 2)]
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
