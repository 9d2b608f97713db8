"""Statistics sets: built-ins, dataset_statistics.json loading and its error messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from magma_ros.codecs import (
    BRIDGE_ORIG,
    DEFAULT_MASK,
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
    # Full precision, exactly as magma-reference.md (Microsoft's SimplerEnv agent) lists them.
    assert BRIDGE_ORIG.q01 == (-0.02872725307941437, -0.04170349963009357, -0.026093858778476715,
                               -0.08092105075716972, -0.09288699507713317, -0.20718276381492615, 0.0)
    assert BRIDGE_ORIG.q99 == (0.028309678435325586, 0.040855254605412394, 0.040161586627364146,
                               0.08192047759890528, 0.07792850524187081, 0.20382574498653397, 1.0)
    assert GOOGLE_ROBOT.q01 == (-0.22453527510166169, -0.14820013284683228, -0.231589707583189,
                                -0.3517994859814644, -0.4193011274933815, -0.43643461108207704, 0.0)
    assert GOOGLE_ROBOT.q99 == (0.17824687153100965, 0.14938379630446405, 0.21842354819178575,
                                0.5892666035890578, 0.35272657424211445, 0.44796681255102094, 1.0)
    for stats in (BRIDGE_ORIG, GOOGLE_ROBOT):
        assert stats.mask == (True,) * 6 + (False,) == DEFAULT_MASK
    with pytest.raises(dataclasses.FrozenInstanceError):
        BRIDGE_ORIG.name = "x"  # type: ignore[misc]
    assert hash(BRIDGE_ORIG) == hash(ActionStatistics("bridge_orig", list(BRIDGE_ORIG.q01), BRIDGE_ORIG.q99))


FULL = {**GOOD, "mean": [0.1] * 7, "std": [0.2] * 7, "min": [-2] * 7, "max": [2] * 7,
        "mask": [True, True, False, True, True, True, False]}


def test_load_reads_every_field_of_the_checkpoint_format(tmp_path: Path) -> None:
    path = _write(tmp_path, {"my_arm": {"action": FULL, "proprio": {"mean": [0] * 8}, "num_transitions": 10,
                                        "num_trajectories": 2}})
    stats = load_dataset_statistics(path)["my_arm"]
    assert stats.q99 == (1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 1.0)
    assert stats.mask == (True, True, False, True, True, True, False)
    assert stats.mean == (0.1,) * 7 and stats.std == (0.2,) * 7
    assert stats.min == (-2.0,) * 7 and stats.max == (2.0,) * 7
    # what to_json writes loads back to the same set
    again = load_dataset_statistics(_write(tmp_path, {"my_arm": {"action": stats.to_json()}}))["my_arm"]
    assert again == stats


def test_missing_mask_normalizes_dims_0_to_5_only(tmp_path: Path) -> None:
    stats = load_dataset_statistics(_write(tmp_path, {"arm": {"action": GOOD}}))["arm"]
    assert stats.mask == DEFAULT_MASK and stats.mean is None
    assert stats.to_json() == {**GOOD, "mask": list(DEFAULT_MASK)}


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
        ({"arm": {"action": {**GOOD, "mask": [1] * 7}}}, ["arm.action", "mask[0] is not a boolean"]),
        ({"arm": {"action": {**GOOD, "mask": [True] * 6}}}, ["mask has 6 values"]),
        ({"arm": {"action": {**GOOD, "std": [0.1] * 6 + [None]}}}, ["std[6] is not a number"]),
        ({"arm": {"action": {**GOOD, "mean": "abc"}}}, ["mean must be a list"]),
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
