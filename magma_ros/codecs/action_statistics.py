"""Per-dataset action statistics (1st and 99th percentiles) used to (un)normalize actions.

Magma normalizes the six motion dimensions of an action to ``[-1, 1]`` with the
dataset's q01 / q99 percentiles. Two published sets are built in (``bridge_orig`` and
``google_robot``); fine-tuned checkpoints ship others in ``dataset_statistics.json``
with the layout ``{name: {"action": {"q01": [7 numbers], "q99": [7 numbers]}}}``
(other keys such as ``mean``, ``std`` or ``mask`` are ignored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .errors import StatisticsError

__all__ = [
    "ACTION_DIM",
    "ACTION_DIM_NAMES",
    "BRIDGE_ORIG",
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
"""Index of the gripper dimension (not un-normalized with the statistics)."""

ACTION_DIM_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
"""dx, dy, dz in metres (robot base frame), droll, dpitch, dyaw in radians, gripper 0..1 (1 = open)."""


def _as_values(name: str, field: str, values: object) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise StatisticsError(f"statistics {name!r}: {field} must be a list of {ACTION_DIM} numbers, "
                              f"got {type(values).__name__}")
    if len(values) != ACTION_DIM:
        raise StatisticsError(f"statistics {name!r}: {field} has {len(values)} values, expected {ACTION_DIM}")
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise StatisticsError(f"statistics {name!r}: {field}[{i}] is not a number: {value!r}")
        if not math.isfinite(float(value)):
            raise StatisticsError(f"statistics {name!r}: {field}[{i}] is not finite: {value!r}")
        out.append(float(value))
    return tuple(out)


@dataclass(frozen=True)
class ActionStatistics:
    """A named q01 / q99 statistics set: 7 finite values each, ``q01 <= q99`` per dimension.

    Lists are stored as tuples so the object is immutable and hashable. Raises
    ``StatisticsError`` naming the set and field when the values are malformed.
    """

    name: str
    q01: tuple[float, ...]
    q99: tuple[float, ...]

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

    @property
    def q01_array(self) -> np.ndarray:
        """q01 as a new float64 array of shape (7,)."""
        return np.array(self.q01, dtype=np.float64)

    @property
    def q99_array(self) -> np.ndarray:
        """q99 as a new float64 array of shape (7,)."""
        return np.array(self.q99, dtype=np.float64)


BRIDGE_ORIG = ActionStatistics(
    name="bridge_orig",
    q01=(-0.028727, -0.041703, -0.026094, -0.080921, -0.092887, -0.207183, 0.0),
    q99=(0.028310, 0.040855, 0.040162, 0.081920, 0.077929, 0.203826, 1.0),
)
"""Published statistics of BridgeData V2 (WidowX, about 5 Hz)."""

GOOGLE_ROBOT = ActionStatistics(
    name="google_robot",
    q01=(-0.224535, -0.148200, -0.231590, -0.351799, -0.419301, -0.436435, 0.0),
    q99=(0.178247, 0.149384, 0.218424, 0.589267, 0.352727, 0.447967, 1.0),
)
"""Published statistics of the Google robot (RT-1 / fractal) data."""

PUBLISHED_STATISTICS: Mapping[str, ActionStatistics] = MappingProxyType(
    {BRIDGE_ORIG.name: BRIDGE_ORIG, GOOGLE_ROBOT.name: GOOGLE_ROBOT}
)
"""The built-in statistics sets by name (read-only)."""


def load_dataset_statistics(path: str | PathLike[str]) -> dict[str, ActionStatistics]:
    """Read every statistics set from a ``dataset_statistics.json`` file.

    Layout: ``{name: {"action": {"q01": [7 numbers], "q99": [7 numbers], ...}, ...}}``.
    Raises ``StatisticsError`` naming the file and the offending field when the file is
    missing, is not valid JSON, or any entry is malformed.
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
            result[name] = ActionStatistics(name=name, q01=action["q01"], q99=action["q99"])
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
