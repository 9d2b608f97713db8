"""Per-dataset action statistics: the percentiles (and mask) that (un)normalize actions.

Magma normalizes an action dimension to ``[-1, 1]`` with the dataset's q01 / q99
percentiles only where the set's ``mask`` is true; the published sets (and any set whose
file has no ``mask``) normalize dims 0..5 and never the gripper (dim 6), whose raw label
(0 = closed, 1 = open) is binned as it is. Two published sets are built in at full
precision (``bridge_orig`` and ``google_robot``, as Microsoft's SimplerEnv agent carries
them); fine-tuned checkpoints ship others in ``dataset_statistics.json``::

    {name: {"action": {"q01": [7], "q99": [7], "mean": [7], "std": [7], "min": [7],
                       "max": [7], "mask": [7 booleans]}, ...}, ...}

``q01`` and ``q99`` are required; ``mean``, ``std``, ``min``, ``max`` and ``mask`` are
optional (validated when present); other keys (``num_transitions``, ``proprio``...) are
ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import StatisticsError

__all__ = [
    "ACTION_DIM",
    "ACTION_DIM_NAMES",
    "BRIDGE_ORIG",
    "DEFAULT_MASK",
    "GOOGLE_ROBOT",
    "GRIPPER_DIM",
    "PUBLISHED_STATISTICS",
    "ActionStatistics",
    "load_dataset_statistics",
    "resolve_statistics",
]

ACTION_DIM = 7
"""Number of action dimensions (and of action tokens per action)."""

GRIPPER_DIM = 6
"""Index of the gripper dimension (never normalized with the statistics)."""

ACTION_DIM_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
"""dx, dy, dz in metres (robot base frame), droll, dpitch, dyaw in radians, gripper 0..1 (1 = open)."""

DEFAULT_MASK: tuple[bool, ...] = (True,) * GRIPPER_DIM + (False,)
"""Which dims are normalized when a set names no ``mask``: dims 0..5, never the gripper."""

_OPTIONAL_FIELDS = ("mean", "std", "min", "max")


def _as_values(name: str, field: str, values: object) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise StatisticsError(f"statistics {name!r}: {field} must be a list of {ACTION_DIM} numbers, "
                              f"got {type(values).__name__}")
    if len(values) != ACTION_DIM:
        raise StatisticsError(f"statistics {name!r}: {field} has {len(values)} values, expected {ACTION_DIM}")
    out = []
    for i, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise StatisticsError(f"statistics {name!r}: {field}[{i}] is not a number: {value!r}")
        if not math.isfinite(float(value)):
            raise StatisticsError(f"statistics {name!r}: {field}[{i}] is not finite: {value!r}")
        out.append(float(value))
    return tuple(out)


def _as_mask(name: str, values: object) -> tuple[bool, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise StatisticsError(f"statistics {name!r}: mask must be a list of {ACTION_DIM} booleans, "
                              f"got {type(values).__name__}")
    if len(values) != ACTION_DIM:
        raise StatisticsError(f"statistics {name!r}: mask has {len(values)} values, expected {ACTION_DIM}")
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, (bool, np.bool_)):
            raise StatisticsError(f"statistics {name!r}: mask[{i}] is not a boolean: {value!r}")
        out.append(bool(value))
    return tuple(out)


@dataclass(frozen=True)
class ActionStatistics:
    """A named statistics set: q01 / q99 (7 finite values each, ``q01 <= q99`` per dimension),
    the normalization ``mask`` (default :data:`DEFAULT_MASK`) and optionally mean, std, min, max.

    Only ``q01``, ``q99`` and ``mask`` take part in encoding and decoding. Lists are stored as
    tuples so the object is immutable and hashable. Raises ``StatisticsError`` naming the set
    and field when the values are malformed.
    """

    name: str
    q01: tuple[float, ...]
    q99: tuple[float, ...]
    mask: tuple[bool, ...] = DEFAULT_MASK
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        q01 = _as_values(self.name, "q01", self.q01)
        q99 = _as_values(self.name, "q99", self.q99)
        bad = [i for i in range(ACTION_DIM) if q99[i] < q01[i]]
        if bad:
            raise StatisticsError(
                f"statistics {self.name!r}: q99 < q01 in dimension(s) {bad} "
                f"(q01={[q01[i] for i in bad]}, q99={[q99[i] for i in bad]})"
            )
        object.__setattr__(self, "q01", q01)
        object.__setattr__(self, "q99", q99)
        object.__setattr__(self, "mask", _as_mask(self.name, self.mask))
        for field in _OPTIONAL_FIELDS:
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, _as_values(self.name, field, value))

    @property
    def q01_array(self) -> np.ndarray:
        """q01 as a new float64 array of shape (7,)."""
        return np.array(self.q01, dtype=np.float64)

    @property
    def q99_array(self) -> np.ndarray:
        """q99 as a new float64 array of shape (7,)."""
        return np.array(self.q99, dtype=np.float64)

    @property
    def mask_array(self) -> np.ndarray:
        """mask as a new bool array of shape (7,): True where a dimension is normalized."""
        return np.array(self.mask, dtype=bool)

    def to_json(self) -> dict[str, Any]:
        """The ``"action"`` object of ``dataset_statistics.json`` (fields that are set, mask always)."""
        out: dict[str, Any] = {"q01": list(self.q01), "q99": list(self.q99)}
        for field in _OPTIONAL_FIELDS:
            value = getattr(self, field)
            if value is not None:
                out[field] = list(value)
        out["mask"] = list(self.mask)
        return out


BRIDGE_ORIG = ActionStatistics(
    name="bridge_orig",
    q01=(-0.02872725307941437, -0.04170349963009357, -0.026093858778476715, -0.08092105075716972,
         -0.09288699507713317, -0.20718276381492615, 0.0),
    q99=(0.028309678435325586, 0.040855254605412394, 0.040161586627364146, 0.08192047759890528,
         0.07792850524187081, 0.20382574498653397, 1.0),
)
"""Published statistics of BridgeData V2 (WidowX, about 5 Hz), full precision."""

GOOGLE_ROBOT = ActionStatistics(
    name="google_robot",
    q01=(-0.22453527510166169, -0.14820013284683228, -0.231589707583189, -0.3517994859814644,
         -0.4193011274933815, -0.43643461108207704, 0.0),
    q99=(0.17824687153100965, 0.14938379630446405, 0.21842354819178575, 0.5892666035890578,
         0.35272657424211445, 0.44796681255102094, 1.0),
)
"""Published statistics of the Google robot (RT-1 / fractal) data, full precision."""

PUBLISHED_STATISTICS: Mapping[str, ActionStatistics] = MappingProxyType(
    {BRIDGE_ORIG.name: BRIDGE_ORIG, GOOGLE_ROBOT.name: GOOGLE_ROBOT}
)
"""The built-in statistics sets by name (read-only)."""


def load_dataset_statistics(path: str | PathLike[str]) -> dict[str, ActionStatistics]:
    """Read every statistics set from a ``dataset_statistics.json`` file.

    Layout: ``{name: {"action": {"q01": [7 numbers], "q99": [7 numbers], "mask": [7 booleans],
    "mean"/"std"/"min"/"max": [7 numbers]}, ...}}``; only q01 and q99 are required (a missing
    ``mask`` means :data:`DEFAULT_MASK`). Raises ``StatisticsError`` naming the file and the
    offending field when the file is missing, is not valid JSON, or any entry is malformed.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise StatisticsError(f"{file}: cannot read dataset statistics: {err}") from err
    except UnicodeDecodeError as err:
        raise StatisticsError(f"{file}: not UTF-8 text: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StatisticsError(f"{file}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    if not isinstance(data, dict) or not data:
        raise StatisticsError(f"{file}: expected a non-empty JSON object {{name: {{'action': ...}}}}")
    result: dict[str, ActionStatistics] = {}
    for name, entry in data.items():
        action = entry.get("action") if isinstance(entry, dict) else None
        if not isinstance(action, dict):
            raise StatisticsError(f"{file}: entry {name!r} has no 'action' object")
        for field in ("q01", "q99"):
            if field not in action:
                raise StatisticsError(f"{file}: {name}.action.{field} is missing")
        try:
            optional = {field: action[field] for field in (*_OPTIONAL_FIELDS, "mask")
                        if action.get(field) is not None}
            result[name] = ActionStatistics(name=name, q01=action["q01"], q99=action["q99"], **optional)
        except StatisticsError as err:
            raise StatisticsError(f"{file}: {name}.action: {err}") from err
    return result


def resolve_statistics(
    name: str | None, dataset_statistics_path: str | PathLike[str] | None = None
) -> ActionStatistics:
    """Find the statistics set to decode actions with.

    Lookup order: the checkpoint's ``dataset_statistics.json`` (when a path is given and
    it has ``name``), then the built-in published sets. ``name=None`` (or ``""``) picks
    the only entry of the file, which is convenient for single-dataset fine-tunes.
    Raises ``StatisticsError`` listing the available names when nothing matches.
    """
    from_file = load_dataset_statistics(dataset_statistics_path) if dataset_statistics_path else {}
    if not name:
        if len(from_file) == 1:
            return next(iter(from_file.values()))
        where = f" in {dataset_statistics_path}" if dataset_statistics_path else ""
        raise StatisticsError(
            f"no statistics name given and no single entry to default to{where}; "
            f"available: {sorted({*from_file, *PUBLISHED_STATISTICS})}"
        )
    if name in from_file:
        return from_file[name]
    if name in PUBLISHED_STATISTICS:
        return PUBLISHED_STATISTICS[name]
    raise StatisticsError(
        f"unknown action statistics {name!r}; available: {sorted({*from_file, *PUBLISHED_STATISTICS})}"
        + (f" (from {dataset_statistics_path} and built-in)" if dataset_statistics_path else " (built-in)")
    )
