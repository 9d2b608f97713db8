"""Per-dataset action statistics, in the format fine-tuned Magma checkpoints ship.

``dataset_statistics.json``::

    {NAME: {"action": {"q01": [7], "q99": [7], "mean": [7], "std": [7], "min": [7], "max": [7],
                       "mask": [true, true, true, true, true, true, false]},
            "proprio": {... the same keys over the 7-D state ...},
            "num_transitions": N, "num_trajectories": M}}

q01 / q99 are ``numpy.quantile`` (linear interpolation) over every step of every episode,
``std`` is the population standard deviation (ddof 0). ``mask`` says which dimensions are
normalized with q01/q99: dims 0..5, never the gripper. Floats are written at full precision.
:func:`magma_ros.codecs.load_dataset_statistics` reads the file back. ROS-free, torch-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from magma_ros.codecs import ACTION_DIM, GRIPPER_DIM
from magma_ros.training.records import STATISTICS_FILE, DatasetError

ACTION_MASK: tuple[bool, ...] = tuple(i != GRIPPER_DIM for i in range(ACTION_DIM))
"""Which action dimensions are normalized with q01/q99: all but the gripper."""


def summarize(values: np.ndarray, mask: Sequence[bool] | None = None) -> dict[str, list[Any]]:
    """q01, q99, mean, std, min, max (and mask, when given) of an (N, D) array, per column."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise DatasetError(f"statistics need a non-empty (N, D) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise DatasetError("statistics over non-finite values (NaN or inf in the labels)")
    summary: dict[str, list[Any]] = {
        "q01": np.quantile(array, 0.01, axis=0).tolist(),
        "q99": np.quantile(array, 0.99, axis=0).tolist(),
        "mean": array.mean(axis=0).tolist(),
        "std": array.std(axis=0).tolist(),
        "min": array.min(axis=0).tolist(),
        "max": array.max(axis=0).tolist(),
    }
    if mask is not None:
        summary["mask"] = [bool(m) for m in mask]
    return summary


def compute_statistics(actions: Sequence[np.ndarray], states: Sequence[np.ndarray] | None = None
                       ) -> dict[str, Any]:
    """One dataset's statistics entry from per-episode (n, 7) action (and state) arrays."""
    episodes = [np.asarray(a, dtype=np.float64).reshape(-1, ACTION_DIM) for a in actions]
    if not episodes or not sum(len(a) for a in episodes):
        raise DatasetError("no steps to compute statistics over")
    entry: dict[str, Any] = {"action": summarize(np.concatenate(episodes), ACTION_MASK)}
    if states is not None and len(states):
        entry["proprio"] = summarize(np.concatenate([np.asarray(s, dtype=np.float64) for s in states]))
    entry["num_transitions"] = int(sum(len(a) for a in episodes))
    entry["num_trajectories"] = len(episodes)
    return entry


def write_statistics(root: str | Path, name: str, entry: dict[str, Any]) -> Path:
    """Write ``{name: entry}`` to ``root/dataset_statistics.json`` (atomically)."""
    path = Path(root) / STATISTICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({name: entry}, indent=2) + "\n")
    os.replace(tmp, path)
    return path
