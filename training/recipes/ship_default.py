"""Copy a trained run into checkpoints/magma-tiny (the embedded default) with its model card.

    .venv/bin/python training/recipes/ship_default.py RUN_OUT [--run run] [--notes NOTES.md]
        [--dest checkpoints/magma-tiny]

RUN_OUT is the directory of training/recipes/default_model.sh: RUN/model (the exported
checkpoint; RUN = ``--run``, default ``run``), RUN/metrics.jsonl, RUN/train_config.yaml,
data/dataset.json, eval_sync/summary.json, optionally eval_realtime/summary.json,
offline/summary.json, tom_sim_truth/summary.json (+ traces.png) and timings.txt. Writes the
weights and their files, ``evaluation.json``
(closed-loop success quoted by ``magma-ros demo``), ``loss_curve.png`` and ``README.md`` (the
model card; ``--notes`` appends a markdown file to it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "preprocessor_config.json", "dataset_statistics.json")
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024

# What the model card says about the data and training of each run ship_default.py can ship
# (the stages of training/recipes/default_model.sh; README.md here has each attempt).
DATA = {
    "act2": ["- Recorded with `magma-ros record-demos` (scripted expert through the ROS stack, rosbag2/mcap): "
             "reach seeds 0..299, pick seeds 1000..1299 (cube layouts and target colours by seed). No seed >= 5000 "
             "was recorded for training."],
    "final": ["- Recorded with `magma-ros record-demos --wrist-inset` (scripted expert through the ROS stack, "
              "rosbag2/mcap; the wrist camera's view pasted into the frame's top-right corner): reach seeds 0..299 "
              "and misjudged picks 1900..2499 (`--aim-error 0.025`: the expert aims up to 2.5 cm off the cube, "
              "then centres its hand on the way down).",
              "- DAgger round 3 (`training/recipes/dagger.py`, seeds 3000..3199): the previous stage's model drives "
              "(the expert's action runs 3 steps in 10), the scripted expert labels every state it reaches.",
              "- Earlier stages trained on reach 0..299 and pick 1000..1299 without the inset, and on DAgger rounds "
              "1-2 (seeds 2600..2999). No seed >= 5000 was recorded for training.",
              "- The last stage's dataset (below) holds the 300 reach episodes three times (ids `reach_*`, "
              "`reach2_*`, `reach3_*`), so that reach is about a third of the action examples."],
}
DATA["trace"] = DATA["final"]
DESCRIPTION = {
    "act2": "magma-tiny-sim256 (1.2 M parameters) trained on scripted-expert demonstrations of this simulated "
            "workcell (training/recipes/default_model.sh)",
    "final": "magma-tiny-sim256 (1.2 M parameters) trained on scripted-expert demonstrations and DAgger rounds in "
             "this simulated workcell, on frames with the wrist camera's view in the corner (sim wrist_inset: true; "
             "training/recipes/default_model.sh, stage final)",
    "trace": "magma-tiny-sim256 (1.2 M parameters) trained on scripted-expert demonstrations and DAgger rounds in "
             "this simulated workcell, on frames with the wrist camera's view in the corner (sim wrist_inset: true), "
             "then on Trace-of-Mark answers with no mark under that view (training/recipes/default_model.sh, stage "
             "trace)",
}
# the dataset a run trained on, under RUN_OUT (default: data)
DATASET_DIR = {"final": "dagger/data5", "trace": "dagger/data6"}
TRAINING_BASE = [
    "Stages on CPU, one thread each (OMP_NUM_THREADS=1), seed 0. First `training/recipes/"
    "pretrain_vision.py --variant magma-tiny-sim256 --global-weight 8 --steps 3000`: the vision tower and "
    "projector learn where the three cubes and the TCP are (labels from the recorded frames and states); "
    "then, with both frozen, `magma-ros train --checkpoint <vision stage> --config "
    "training/recipes/default_model.yaml` trains the language model on the actions, the `polish` stage "
    "continues with `training/recipes/default_model_polish.yaml`, and stages `tom1`..`tom3` "
    "(`default_model_tom{1,2,3}.yaml`) teach it the Trace-of-Mark answer and then sharpen the actions "
    "again; `vision2` (`pretrain_vision.py --init <tom3> --state-weight 4 --yaw-weight 4 --steps 1500`) "
    "teaches the tower three more targets (TCP height, gripper opening, grasp yaw) beside the places, and "
    "`act2` (`default_model_act2.yaml`) trains actions and Trace-of-Mark over it.",
]
TRAINING = {
    "final": [
        "",
        "Then, with the wrist inset in the frame and also given as an image of its own (`action_regions`), "
        "the tower training too: `act_dagger1` (`default_model_dagger1.yaml`, the misjudged picks + DAgger "
        "round 1, act2 driving), `act_dagger2` (`default_model_dagger2.yaml`, + round 2), `act_dagger3` (the "
        "same recipe on the misjudged picks + round 3 only), `mix` (`default_model_final.yaml`): act_dagger3 "
        "trained on with the reach recordings and Trace-of-Mark batches back in the data, its action statistics "
        "kept (`statistics_from: checkpoint`), and `final` (`default_model_final2.yaml`): mix trained on with "
        "the reach episodes three times over in the data.",
        "",
    ],
}
TRAINING["trace"] = [*TRAINING["final"][:-1], (
    "Last, `trace`: final's dataset relabelled with `--ignore-region wrist-inset` (no mark under the wrist "
    "view is ever answered: the tracker follows that view's own motion there, which the scene's marks do not "
    "make), and four runs from final (`default_model_trace1..4.yaml`): 1500, 2500 and 4000 steps with 80% "
    "Trace-of-Mark batches at lr 2e-4, then 800 steps with 65% at lr 1e-4."), ""]
LABELS = {   # the label-traces options of a run's dataset, beyond the defaults the card lists
    "trace": " --ignore-region wrist-inset",
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(summary: dict | None) -> dict[str, dict]:
    return {} if not summary else summary.get("tasks", {})


def _seeds(summary: dict | None) -> str:
    if not summary:
        return ""
    seeds = sorted({e["seed"] for e in summary.get("episodes", [])})
    return f"seeds {seeds[0]}..{seeds[-1]}" if seeds else ""


def _table(summary: dict | None) -> str:
    lines = ["| task | episodes | successes | rate | 95% Wilson CI | mean steps |", "|---|---|---|---|---|---|"]
    for task, r in sorted(_rows(summary).items()):
        lines.append(f"| {task} | {r['episodes']} | {r['successes']} | {100 * r['success_rate']:.0f}% | "
                     f"{100 * r['ci95_low']:.0f}-{100 * r['ci95_high']:.0f}% | {r['mean_steps']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_out", type=Path)
    parser.add_argument("--run", default="run", help="the training run under RUN_OUT to ship (its model/, "
                                                     "metrics.jsonl, train_config.yaml)")
    parser.add_argument("--notes", type=Path, help="markdown appended to the model card (limitations, provenance)")
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[2] / "checkpoints" / "magma-tiny")
    args = parser.parse_args(argv)
    run = args.run_out / args.run
    model = run / "model"
    size = (model / "model.safetensors").stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        parser.error(f"weights are {size} bytes, over the 20 MB the repository ships")
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(model / name, args.dest / name)
    if (run / "loss_curve.png").is_file():
        shutil.copy2(run / "loss_curve.png", args.dest / "loss_curve.png")

    sync = _load(args.run_out / "eval_sync" / "summary.json")
    # realtime runs: eval_realtime (older runs) and eval_realtime_<camera Hz>, each with its camera rate
    realtimes = [summary for path in sorted(args.run_out.glob("eval_realtime*/summary.json"))
                 if (summary := _load(path))]
    realtimes.sort(key=lambda summary: -float(summary.get("camera_hz", 30.0)))
    offline = _load(args.run_out / "offline" / "summary.json")
    truth = _load(args.run_out / "tom_sim_truth" / "summary.json")
    if truth and (args.run_out / "tom_sim_truth" / "traces.png").is_file():
        shutil.copy2(args.run_out / "tom_sim_truth" / "traces.png", args.dest / "traces.png")
    dataset = _load(args.run_out / DATASET_DIR.get(args.run, "data") / "dataset.json") or {}
    config = (run / "train_config.yaml").read_text()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    trains = [m for m in metrics if m.get("kind") == "train"]
    timings = (args.run_out / "timings.txt").read_text().strip() if (args.run_out / "timings.txt").is_file() else ""

    description = DESCRIPTION.get(args.run, DESCRIPTION["act2"])
    evaluation: dict[str, Any] = {"description": description}
    def rows(summary: dict) -> dict[str, Any]:
        return {"seeds": _seeds(summary), "mode": summary.get("mode"),
                **({"camera_hz": summary["camera_hz"]} if "camera_hz" in summary else {}),
                "tasks": {t: {k: r[k] for k in ("episodes", "successes", "success_rate", "ci95_low", "ci95_high",
                                                "mean_steps")} for t, r in _rows(summary).items()}}

    if sync:
        evaluation["synchronous"] = rows(sync)
    if realtimes:   # the first (fastest camera) under "realtime", as before; every one under "realtime_runs"
        evaluation["realtime"] = rows(realtimes[0])
        evaluation["realtime_runs"] = [rows(summary) for summary in realtimes]
    traces = (offline or {}).get("traces") or {}
    if truth:   # against the simulator's exact motion of the marks
        evaluation["trace_of_mark"] = {
            "against": "simulator ground truth", "samples": truth.get("samples"),
            "answers_parsed": truth.get("answers_parsed"), "marks_traced": truth.get("marks_traced"),
            "endpoint_error_median_px": (truth.get("endpoint_error_grid") or {}).get("median"),
            "standing_still_median_px": ((truth.get("standing_still") or {}).get("endpoint_error_grid_on_traced_marks")
                                         or {}).get("median"),
            "endpoint_error_median_all_marks_px": (truth.get("endpoint_error_grid_all_marks") or {}).get("median"),
            "standing_still_median_all_marks_px": ((truth.get("standing_still") or {}).get("endpoint_error_grid")
                                                   or {}).get("median")}
    elif traces:
        grid = traces.get("endpoint_error_grid") or {}
        evaluation["trace_of_mark"] = {"against": "point-tracker labels",
                                       "answers_parsed": traces.get("answers_parsed"),
                                       "endpoint_error_median_px": grid.get("median"),
                                       "samples": traces.get("samples")}
    (args.dest / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")

    episodes = dataset.get("episodes", [])
    steps = sum(e.get("steps", 0) for e in episodes)
    last_eval = evals[-1] if evals else {}
    card = [
        "# magma-tiny (the embedded default of magma_ros)",
        "",
        f"{description}. Loaded when a policy's `checkpoint` is `''` (`magma-ros demo`, config/policy_sim.yaml, "
        "every sim bringup). It knows one workcell: the simulated Panda with three cubes (red, green, blue) "
        "and two instructions, `reach the {color} cube` and `pick up the {color} cube`. It is a demonstration "
        "that the package's own pipeline (record -> dataset build -> label-traces -> train) produces a policy "
        "that acts; it is not a general robot policy.",
        "",
        "## Data",
        "",
        *DATA.get(args.run, DATA["act2"]),
        f"- Built with `magma-ros dataset build --spec config/datasets/sim_panda.yaml`: {len(episodes)} episodes, "
        f"{steps} steps at 10 Hz, 256x256 frames; `dataset_statistics.json` under the name `sim_panda`.",
        "- Trace-of-Mark labels: `magma-ros dataset label-traces --window 9 --stride 8 --seed 0 --marks grid"
        f"{LABELS.get(args.run, '')}` "
        "(the policy node's 3x4 grid of marks, ids in reading order; a mark moves with the OpenCV Lucas-Kanade "
        "tracks of the 15x15 grid within 20 px of it; 8 future steps = the policy node's `trace_steps`).",
        "",
        "## Training",
        "",
        *TRAINING_BASE,
        *TRAINING.get(args.run, []),
        f"The configuration of the shipped run (`{args.run}`):",
        "",
        "```yaml",
        config.strip(),
        "```",
        "",
        f"Final train loss {trains[-1]['loss']:.3f} at step {trains[-1]['step']}." if trains else "",
        "Held-out split (5% of the training episodes, never trained on), last evaluation: "
        + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items() if isinstance(v, (int, float)) and k != "step")
        if last_eval else "",
        "",
        "![loss curve](loss_curve.png)",
        "",
        "## Closed-loop success (held-out seeds, through the ROS stack)",
        "",
        "`magma-ros evaluate --checkpoint checkpoints/magma-tiny --task reach pick --episodes 50 --seed 5000` "
        f"(synchronous sim: deterministic; {_seeds(sync)}, never used in training):",
        "",
        _table(sync),
        "",
    ]
    for realtime in realtimes:
        hz = float(realtime.get("camera_hz", 30.0))
        card += [f"Realtime mode (`--realtime {hz:g}`: sim time follows the wall clock, camera {hz:g} Hz, each node "
                 f"in its own process, the policy acts on the newest frame; {_seeds(realtime)}; measured on a 2-core "
                 "machine, so it depends on the CPU load at the time):", "", _table(realtime), ""]
    if truth:
        grid = truth.get("endpoint_error_grid") or {}
        still = (truth.get("standing_still") or {}).get("endpoint_error_grid_on_traced_marks") or {}
        every = truth.get("endpoint_error_grid_all_marks") or {}
        still_every = (truth.get("standing_still") or {}).get("endpoint_error_grid") or {}
        seeds = truth.get("seeds") or ["?", "?"]
        card += ["## Trace-of-Mark", "",
                 f"`training/recipes/tom_sim_truth.py` (tasks {', '.join(truth.get('tasks', []))}, held-out seeds "
                 f"{seeds[0]}..{seeds[-1]}): the scripted expert runs in the workcell, every window of 9 frames "
                 "gets the policy node's question about its 3x4 grid of marks, and each answer is scored "
                 "against the simulator's exact motion of the marks (not a tracker's labels).", "",
                 f"- windows asked: {truth.get('samples')}; answers that parse: "
                 f"{100 * (truth.get('answers_parsed') or 0):.0f}%; moving marks traced: "
                 f"{100 * (truth.get('marks_traced') or 0):.0f}%",
                 f"- endpoint error at 256x256: median {grid.get('median') or float('nan'):.1f} px, mean "
                 f"{grid.get('mean') or float('nan'):.1f} px, p90 {grid.get('p90') or float('nan'):.1f} px; the "
                 f"answer \"nothing moves\" on the same marks: median {still.get('median') or float('nan'):.1f} px",
                 *([f"- over every moving mark, one not traced scored as \"nothing moves\": median "
                    f"{every['median']:.1f} px (\"nothing moves\" for all: {still_every.get('median') or 0:.1f} px)"]
                   if every.get("median") is not None else []),
                 "", "![predicted (red) and true (green) traces](traces.png)", ""]
    if traces:
        grid = traces.get("endpoint_error_grid") or {}
        card += ["## Trace-of-Mark against the tracker's labels", "",
                 "`magma-ros evaluate-offline` on held-out recordings (reach and pick seeds 6000..6009, labelled "
                 "like the training data): the labels' own questions asked about their marked frames.", "",
                 f"- samples: {traces.get('samples')}; answers that parse: "
                 f"{100 * traces.get('answers_parsed', 0):.0f}%",
                 f"- endpoint error vs the labels at 256x256: median {grid.get('median', float('nan')):.1f} px, "
                 f"mean {grid.get('mean', float('nan')):.1f} px, p90 {grid.get('p90', float('nan')):.1f} px",
                 "- the labels themselves are within ~3 px (median) of the simulator's ground truth "
                 "(bench/tracker_bench.py)", ""]
    if timings:
        card += ["## Wall time (2 shared CPU cores)", "", "```", timings, "```", ""]
    if args.notes:
        card += [args.notes.read_text().strip(), ""]
    card += ["## Files", "", "safetensors weights, config.json, tokenizer files, preprocessor_config.json, "
             "dataset_statistics.json (`sim_panda`), evaluation.json (what `magma-ros demo` quotes), loss_curve.png.",
             ""]
    (args.dest / "README.md").write_text("\n".join(line for line in card if line is not None) + "\n")
    print(f"shipped {model} -> {args.dest} ({size / 1e6:.1f} MB weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
