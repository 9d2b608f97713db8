"""dataset_statistics.json: matches numpy on the written labels, loads as the checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from magma_ros.codecs import load_dataset_statistics
from magma_ros.training.records import STATISTICS_FILE, DatasetError
from magma_ros.training.statistics import ACTION_MASK, compute_statistics, summarize, write_statistics


@pytest.mark.slow  # needs the recorded demos
def test_statistics_match_numpy_on_the_written_labels(sim_dataset: Path) -> None:
    # the labels as written, read straight from the Parquet files (not through the dataset reader)
    files = sorted((sim_dataset / "episodes").glob("*.parquet"))
    actions = np.concatenate([np.array(pq.read_table(f).column("action").to_pylist()) for f in files])
    states = np.concatenate([np.array(pq.read_table(f).column("state").to_pylist()) for f in files])
    entry = json.loads((sim_dataset / STATISTICS_FILE).read_text())["sim_panda"]
    action = entry["action"]
    np.testing.assert_allclose(action["q01"], np.quantile(actions, 0.01, axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(action["q99"], np.quantile(actions, 0.99, axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(action["mean"], actions.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(action["std"], actions.std(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(action["min"], actions.min(axis=0))
    np.testing.assert_array_equal(action["max"], actions.max(axis=0))
    assert action["mask"] == [True] * 6 + [False]
    np.testing.assert_allclose(entry["proprio"]["mean"], states.mean(axis=0), rtol=1e-12, atol=1e-15)
    assert entry["num_transitions"] == len(actions) and entry["num_trajectories"] == len(files)
    loaded = load_dataset_statistics(sim_dataset / STATISTICS_FILE)["sim_panda"]
    assert loaded.q01 == tuple(action["q01"]) and loaded.q99 == tuple(action["q99"])  # full precision


def test_summarize_known_values() -> None:
    values = np.arange(101, dtype=np.float64)[:, None] * np.array([[1.0, -2.0]])
    s = summarize(values, mask=[True, False])
    assert s["q01"] == [1.0, -198.0] and s["q99"] == [99.0, -2.0]
    assert s["mean"] == [50.0, -100.0] and s["min"] == [0.0, -200.0] and s["max"] == [100.0, 0.0]
    assert s["mask"] == [True, False]
    assert ACTION_MASK == (True,) * 6 + (False,)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="non-finite"):
        summarize(np.array([[0.0, np.nan]]))
    with pytest.raises(DatasetError, match="non-empty"):
        summarize(np.zeros((0, 7)))
    with pytest.raises(DatasetError, match="no steps"):
        compute_statistics([])
    entry = compute_statistics([np.zeros((3, 7)), np.ones((2, 7))])
    path = write_statistics(tmp_path, "set", entry)
    assert load_dataset_statistics(path)["set"].q99 == (1.0,) * 7
