"""`magma-ros evaluate-offline`: score a checkpoint on a recorded dataset, step by step.

Runs the policy through the same backend code the policy node runs on every step of a dataset
written by ``magma-ros dataset build`` and compares its actions with the recorded labels
(per-dimension error in metric units, gripper accuracy, action-token accuracy), and its
Trace-of-Mark answers with the dataset's ToM labels when it has them. Writes
``OUT/summary.json``, ``OUT/predictions.npz`` and ``OUT/plots/<episode>.png``
(see :mod:`magma_ros.training.offline_eval`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from magma_ros.backends.options import add_backend_arguments

    parser = subparsers.add_parser(
        "evaluate-offline", help="per-step action and trace errors of a checkpoint on a recorded dataset",
        description="Run a checkpoint on every step of a dataset built by `magma-ros dataset build` (through the "
                    "policy node's backend) and report per-dimension action error (MAE/RMSE, metric units), "
                    "gripper accuracy, action-token accuracy and Trace-of-Mark endpoint error; per-episode plots "
                    "of predicted vs recorded deltas and a JSON summary.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory")
    parser.add_argument("--data", required=True, help="dataset directory (magma-ros dataset build --out)")
    parser.add_argument("--out", required=True, help="directory for summary.json, predictions.npz and plots/")
    add_backend_arguments(parser)  # --backend and the compiled-backend options, as on predict / evaluate
    parser.add_argument("--statistics", default=None,
                        help="statistics set to decode with (default: the dataset's name, from the checkpoint's "
                             "dataset_statistics.json)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    parser.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, float16)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    parser.add_argument("--max-episodes", type=int, default=None, help="evaluate only the first N episodes")
    parser.add_argument("--max-steps", type=int, default=None, help="evaluate only the first N steps of each")
    parser.add_argument("--trace-samples", type=int, default=None,
                        help="Trace-of-Mark labels to query (default all; 0 = skip traces)")
    parser.add_argument("--no-plots", action="store_true", help="do not write per-episode plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fmt(value: Any, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def run(args: argparse.Namespace) -> int:
    from magma_ros.backends.options import options_from_args
    from magma_ros.training.offline_eval import OfflineEvalConfig, OfflineEvalError, run_offline_evaluation

    try:
        config = OfflineEvalConfig(max_episodes=args.max_episodes, max_steps=args.max_steps,
                                   trace_samples=args.trace_samples, plots=not args.no_plots,
                                   progress=not args.no_progress)
        result = run_offline_evaluation(args.checkpoint, args.data, args.out, backend=args.backend,
                                        statistics=args.statistics, device=args.device, dtype=args.dtype,
                                        temperature=args.temperature, config=config,
                                        options=options_from_args(args))
    except OfflineEvalError as err:
        print(f"magma-ros evaluate-offline: {err}", file=sys.stderr)
        return 2
    s = result.summary
    print(f"{s['steps']} steps of {s['dataset']['episodes_evaluated']} episode(s), {s['valid_steps']} valid "
          f"actions; statistics {s['statistics']}")
    for name, err in s["action_error"].items():
        unit = err["unit"] or "-"
        print(f"  {name:8s} MAE {_fmt(err['mae'])} RMSE {_fmt(err['rmse'])} {unit}")
    tokens = s["token_accuracy"]
    print(f"gripper accuracy {_fmt(s['gripper_accuracy'], 100, 1)}%  token accuracy "
          f"{_fmt(tokens and tokens['mean'], 100, 1)}%")
    traces = s["traces"]
    if traces.get("samples"):
        print(f"traces: {traces['samples']} samples, endpoint error median "
              f"{_fmt(traces['endpoint_error_grid']['median'], 1, 1)} grid cells, "
              f"{_fmt(traces['marks_traced'], 100, 1)}% of labelled marks traced")
    elif traces.get("note"):
        print(f"traces: {traces['note']}")
    print(f"summary: {result.summary_path}")
    return 0
