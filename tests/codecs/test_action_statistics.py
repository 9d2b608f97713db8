"""Statistics sets: built-ins, dataset_statistics.json loading and its error messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from magma_ros.codecs import (
    BRIDGE_ORIG,
    GOOGLE_ROBOT,
    PUBLISHED_STATISTICS,
    ActionStatistics,
    StatisticsError,
    load_dataset_statistics,
    resolve_statistics,
)

GOOD = {"q01": [-1, -1, -1, -0.5, -0.5, -0.5, 0], "q99": [1, 1, 1, 0.5, 0.5, 0.5, 1]}


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "dataset_statistics.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_published_sets_are_built_in_and_frozen() -> None:
    assert set(PUBLISHED_STATISTICS) == {"bridge_orig", "google_robot"}
    assert BRIDGE_ORIG.q01[0] == -0.028727 and BRIDGE_ORIG.q99[5] == 0.203826
    assert GOOGLE_ROBOT.q01[3] == -0.351799 and GOOGLE_ROBOT.q99[3] == 0.589267
    with pytest.raises(dataclasses.FrozenInstanceError):
        BRIDGE_ORIG.name = "x"  # type: ignore[misc]
    assert hash(BRIDGE_ORIG) == hash(ActionStatistics("bridge_orig", list(BRIDGE_ORIG.q01), BRIDGE_ORIG.q99))


def test_load_reads_q01_q99_and_ignores_other_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, {"my_arm": {"action": {**GOOD, "mean": [0] * 7, "mask": [True] * 6 + [False]},
                                        "num_transitions": 10}})
    stats = load_dataset_statistics(path)
    assert stats["my_arm"].q99 == (1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 1.0)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("{not json", ["dataset_statistics.json", "invalid JSON", "line 1"]),
        ([], ["dataset_statistics.json", "non-empty JSON object"]),
        ({"arm": {"proprio": {}}}, ["dataset_statistics.json", "'arm'", "'action'"]),
        ({"arm": {"action": {"q01": GOOD["q01"]}}}, ["dataset_statistics.json", "arm.action.q99 is missing"]),
        ({"arm": {"action": {**GOOD, "q01": [0] * 6}}}, ["dataset_statistics.json", "q01 has 6 values"]),
        ({"arm": {"action": {**GOOD, "q99": [1] * 6 + ["x"]}}}, ["dataset_statistics.json", "q99[6]"]),
        ({"arm": {"action": {**GOOD, "q99": "1234567"}}}, ["q99 must be a list"]),
        ({"arm": {"action": {"q01": [1] * 7, "q99": [0] * 7}}}, ["q99 < q01"]),
    ],
)
def test_malformed_files_name_file_and_field(tmp_path: Path, content: object, fragments: list[str]) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(StatisticsError) as info:
        load_dataset_statistics(path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(StatisticsError, match=r"nope\.json"):
        load_dataset_statistics(tmp_path / "nope.json")


def test_statistics_validate_values() -> None:
    with pytest.raises(StatisticsError, match="not finite"):
        ActionStatistics("x", [float("nan")] * 7, [1] * 7)
    with pytest.raises(StatisticsError, match="expected 7"):
        ActionStatistics("x", [0] * 8, [1] * 8)


def test_resolve_prefers_the_checkpoint_file_then_built_ins(tmp_path: Path) -> None:
    assert resolve_statistics("google_robot") is GOOGLE_ROBOT
    path = _write(tmp_path, {"bridge_orig": {"action": GOOD}, "mine": {"action": GOOD}})
    assert resolve_statistics("bridge_orig", path).q01[0] == -1.0
    assert resolve_statistics("google_robot", path) is GOOGLE_ROBOT
    assert resolve_statistics("mine", path).name == "mine"
    with pytest.raises(StatisticsError, match="no single entry"):
        resolve_statistics(None, path)
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"only": {"action": GOOD}}))
    assert resolve_statistics(None, single).name == "only"
    with pytest.raises(StatisticsError, match=r"unknown action statistics 'x'.*bridge_orig.*mine"):
        resolve_statistics("x", path)
