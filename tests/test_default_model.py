"""The embedded default's plumbing: how `checkpoint: ''` resolves, what the demo says about it, how
training/recipes/ship_default.py turns a recipe run into the shipped directory (weights, model
card, evaluation.json) and how training/recipes/compare_runs.py checks a re-run.

These tests build real tiny checkpoints and run directories in tmp_path, so they hold whether or
not a trained default ships in checkpoints/magma-tiny (one does since attempt 5 of
training/recipes/README.md)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from magma_ros.backends.default_checkpoint import default_checkpoint, shipped_evaluation
from magma_ros.cli.demo import describe_default

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "training" / "recipes"


def _summary(mode: str, seed0: int, rows: dict[str, tuple[int, int]]) -> dict:
    from magma_ros.evaluation import wilson_interval

    tasks, episodes = {}, []
    for task, (successes, n) in rows.items():
        low, high = wilson_interval(successes, n)
        tasks[task] = {"task": task, "episodes": n, "successes": successes, "success_rate": successes / n,
                       "ci95_low": low, "ci95_high": high, "mean_steps": 30.0}
        episodes += [{"task": task, "seed": seed0 + i, "success": i < successes} for i in range(n)]
    return {"mode": mode, "tasks": tasks, "episodes": episodes}


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory laid out like default_model.sh's, around a real (untrained) tiny checkpoint."""
    from magma_ros.model import build_tiny_model, save_checkpoint

    out = tmp_path_factory.mktemp("recipe_run")
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    stats = {"sim_panda": {"action": {"q01": [-0.01] * 6 + [0.0], "q99": [0.01] * 6 + [1.0],
                                      "mask": [True] * 6 + [False]}}}
    save_checkpoint(model, tokenizer, out / "run" / "model", dataset_statistics=stats)
    (out / "run" / "train_config.yaml").write_text("seed: 0\nsteps: 20\n")
    (out / "run" / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "kind": "train", "loss": 3.5}) + "\n"
        + json.dumps({"step": 20, "kind": "eval", "loss": 3.1, "action_token_accuracy": 0.3}) + "\n")
    (out / "data").mkdir()
    (out / "data" / "dataset.json").write_text(json.dumps({"episodes": [{"id": "e0", "steps": 20}]}))
    for name, summary in (("eval_sync", _summary("synchronous", 5000, {"reach": (46, 50), "pick": (31, 50)})),
                          ("eval_realtime", _summary("realtime", 5000, {"reach": (12, 20), "pick": (5, 20)})),
                          ("eval_realtime_10", {**_summary("realtime", 5000, {"reach": (16, 20), "pick": (0, 20)}),
                                                "camera_hz": 10.0})):
        (out / name).mkdir()
        (out / name / "summary.json").write_text(json.dumps(summary))
    (out / "offline").mkdir()
    (out / "offline" / "summary.json").write_text(json.dumps({"traces": {
        "samples": 40, "answers_parsed": 0.95, "endpoint_error_grid": {"median": 9.5, "mean": 11.0, "p90": 20.0}}}))
    return out


def test_override_and_untrained_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAGMA_ROS_DEFAULT_CHECKPOINT", str(tmp_path))
    assert default_checkpoint() == (tmp_path, f"MAGMA_ROS_DEFAULT_CHECKPOINT={tmp_path}")
    monkeypatch.delenv("MAGMA_ROS_DEFAULT_CHECKPOINT")
    path, description = default_checkpoint()
    if (REPO / "checkpoints" / "magma-tiny" / "config.json").is_file():
        assert description.startswith("shipped magma-tiny")
    else:  # nothing shipped: the untrained magma-tiny, and the demo says so
        assert "untrained" in description and (path / "config.json").is_file()
        assert "untrained" in "\n".join(describe_default(None, untrained=True))


def test_ship_default_writes_the_directory_the_default_loads(recipe_run: Path, tmp_path: Path) -> None:
    ship = runpy.run_path(str(RECIPES / "ship_default.py"))["main"]
    dest = tmp_path / "checkpoints" / "magma-tiny"
    assert ship([str(recipe_run), "--dest", str(dest)]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "dataset_statistics.json", "README.md", "evaluation.json"):
        assert (dest / name).is_file(), name
    shipped_weights = (dest / "model.safetensors").read_bytes()
    assert shipped_weights == (recipe_run / "run" / "model" / "model.safetensors").read_bytes()
    evaluation = shipped_evaluation(dest)
    reach = evaluation["synchronous"]["tasks"]["reach"]
    assert (reach["successes"], reach["episodes"]) == (46, 50) and reach["ci95_low"] < 0.92 < reach["ci95_high"]
    assert evaluation["synchronous"]["seeds"] == "seeds 5000..5049"
    assert evaluation["trace_of_mark"]["endpoint_error_median_px"] == 9.5
    card = (dest / "README.md").read_text()
    assert "| reach | 50 | 46 | 92% |" in card and "| pick | 50 | 31 | 62% |" in card
    assert "Realtime mode" in card and "| pick | 20 | 5 | 25% |" in card and "median 9.5 px" in card
    # every realtime run, each with its camera rate (a run without one is from before rates were recorded: 30 Hz)
    assert "`--realtime 30`" in card and "`--realtime 10`" in card and "| reach | 20 | 16 | 80% |" in card
    assert card.index("`--realtime 30`") < card.index("`--realtime 10`")
    assert [run["tasks"]["reach"]["successes"] for run in evaluation["realtime_runs"]] == [12, 16]
    assert evaluation["realtime"]["tasks"]["reach"]["successes"] == 12
    assert evaluation["realtime_runs"][1]["camera_hz"] == 10
    # what the demo prints about it
    text = "\n".join(describe_default(evaluation, untrained=False))
    assert "magma-tiny-sim" in text and "reach 46/50 (92%, 95% CI" in text and "realtime" in text
    assert "realtime, camera 10 Hz" in text and "reach 16/20 (80%" in text
    assert "untrained" not in text
    # the loaded checkpoint decodes with its own statistics
    from magma_ros.codecs.action_statistics import resolve_statistics

    assert resolve_statistics("sim_panda", dest / "dataset_statistics.json").name == "sim_panda"


def test_ship_default_ships_another_run_and_appends_notes(recipe_run: Path, tmp_path: Path) -> None:
    import shutil

    ship = runpy.run_path(str(RECIPES / "ship_default.py"))["main"]
    shutil.copytree(recipe_run / "run", recipe_run / "polish", dirs_exist_ok=True)
    (recipe_run / "polish" / "train_config.yaml").write_text("seed: 0\nsteps: 99\n")
    notes = tmp_path / "notes.md"
    notes.write_text("## Limitations\n\n- reach only\n")
    dest = tmp_path / "shipped"
    assert ship([str(recipe_run), "--run", "polish", "--notes", str(notes), "--dest", str(dest)]) == 0
    card = (dest / "README.md").read_text()
    assert "steps: 99" in card and "## Limitations" in card and "- reach only" in card
    assert card.index("## Limitations") < card.index("## Files")
    assert "DAgger" not in card and "pick seeds 1000..1299" in card


def test_ship_default_describes_the_final_stage_and_its_dataset(recipe_run: Path, tmp_path: Path) -> None:
    import shutil

    ship = runpy.run_path(str(RECIPES / "ship_default.py"))["main"]
    shutil.copytree(recipe_run / "run", recipe_run / "final", dirs_exist_ok=True)
    (recipe_run / "dagger" / "data5").mkdir(parents=True)
    (recipe_run / "dagger" / "data5" / "dataset.json").write_text(
        json.dumps({"episodes": [{"id": "e0", "steps": 20}, {"id": "e1", "steps": 22}]}))
    dest = tmp_path / "shipped"
    assert ship([str(recipe_run), "--run", "final", "--dest", str(dest)]) == 0
    card = (dest / "README.md").read_text()
    assert "DAgger round 3" in card and "seeds 3000..3199" in card and "statistics_from: checkpoint" in card
    assert "2 episodes, 42 steps" in card


def test_shipped_evaluation_missing_or_broken_is_none(tmp_path: Path) -> None:
    assert shipped_evaluation(tmp_path) is None
    (tmp_path / "evaluation.json").write_text("{not json")
    assert shipped_evaluation(tmp_path) is None
    assert describe_default(None, untrained=False) == []


def _dataset(root: Path, actions: list[float]) -> None:
    (root / "data" / "episodes").mkdir(parents=True)
    table = pa.table({"step": pa.array([0, 1], pa.int32()), "image": [b"\x89PNG-a", b"\x89PNG-b"],
                      "action": [[a] * 7 for a in actions], "instruction": ["reach the red cube"] * 2})
    pq.write_table(table.replace_schema_metadata({"source": str(root)}), root / "data" / "episodes" / "e.parquet")
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * (i + 1), "kind": "train", "loss": 4.0 - i * 0.1}) + "\n" for i in range(5)))


def test_compare_runs_finds_identical_content_and_differences(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    compare = runpy.run_path(str(RECIPES / "compare_runs.py"))["main"]
    _dataset(tmp_path / "a", [0.1, 0.2])
    _dataset(tmp_path / "b", [0.1, 0.2])   # same content, other source path in the file's metadata
    _dataset(tmp_path / "c", [0.1, 0.3])
    assert compare([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "identical content: 1" in capsys.readouterr().out
    assert compare([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "DIFFERENT episodes/e.parquet" in capsys.readouterr().out


def test_evaluate_realtime_option() -> None:
    import argparse

    from magma_ros.cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--realtime", "30", "--task", "reach"])
    assert args.realtime == 30.0
    assert cli.EvaluationSettings(realtime_camera_hz=30.0).realtime_camera_hz == 30.0
    with pytest.raises(ValueError, match="--realtime"):
        cli.EvaluationSettings(realtime_camera_hz=-1.0)


def test_ship_default_describes_the_trace_stage_and_both_trace_of_mark_medians(recipe_run: Path,
                                                                              tmp_path: Path) -> None:
    import shutil

    ship = runpy.run_path(str(RECIPES / "ship_default.py"))["main"]
    shutil.copytree(recipe_run / "run", recipe_run / "trace", dirs_exist_ok=True)
    (recipe_run / "dagger" / "data6").mkdir(parents=True)
    (recipe_run / "dagger" / "data6" / "dataset.json").write_text(
        json.dumps({"episodes": [{"id": "e0", "steps": 20}, {"id": "e1", "steps": 22}, {"id": "e2", "steps": 9}]}))
    (recipe_run / "tom_sim_truth").mkdir(exist_ok=True)
    (recipe_run / "tom_sim_truth" / "summary.json").write_text(json.dumps({
        "samples": 81, "answers_parsed": 1.0, "marks_traced": 0.87, "tasks": ["reach", "pick"], "seeds": [6000, 6009],
        "endpoint_error_grid": {"median": 10.3, "mean": 23.9, "p90": 64.0},
        "endpoint_error_grid_all_marks": {"median": 15.5, "mean": 27.0, "p90": 66.0},
        "standing_still": {"endpoint_error_grid": {"median": 32.8}, "endpoint_error_grid_on_traced_marks":
                           {"median": 28.1}}}))
    try:
        dest = tmp_path / "shipped"
        assert ship([str(recipe_run), "--run", "trace", "--dest", str(dest)]) == 0
    finally:
        shutil.rmtree(recipe_run / "tom_sim_truth")
    card = (dest / "README.md").read_text()
    assert "--marks grid --ignore-region wrist-inset`" in card and "stage trace" in card
    assert "default_model_trace1..4.yaml" in card and "DAgger round 3" in card
    assert "3 episodes, 51 steps" in card
    assert "median 10.3 px" in card and "one not traced scored as \"nothing moves\": median 15.5 px" in card
    assert "(\"nothing moves\" for all: 32.8 px)" in card
    tom = json.loads((dest / "evaluation.json").read_text())["trace_of_mark"]
    assert tom["against"] == "simulator ground truth" and tom["endpoint_error_median_px"] == 10.3
    assert tom["endpoint_error_median_all_marks_px"] == 15.5 and tom["standing_still_median_all_marks_px"] == 32.8
