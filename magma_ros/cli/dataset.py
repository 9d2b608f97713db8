"""`magma-ros dataset ...`: training datasets from rosbag2 recordings.

Subcommands (each a module exposing ``register(subparsers)``, imported lazily):

* ``build BAG_OR_DIR... --spec SPEC.yaml --out DIR`` (this module): recordings -> a dataset
  (magma_ros.training.builder). Resumable; exit status 0 when every bag became an episode or
  was already in the dataset, 1 when some were skipped (each reported in one line), 2 for
  bad arguments (unknown spec field, missing input...).
* ``info DIR`` (this module): what a dataset holds.
* more subcommands plug in through :data:`EXTENSIONS` (``label-traces``: Trace-of-Mark labels).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

EXTENSIONS: tuple[str, ...] = ("magma_ros.cli.label_traces",)
"""Modules adding ``magma-ros dataset`` subcommands: each exposes ``register(subparsers)``.
A module listed here that does not exist (yet) is left out of the command line."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset", help="build and inspect Magma training datasets from rosbag2 recordings",
        description="Turn rosbag2 recordings (mcap or sqlite3, split, zstd) into a Magma training dataset: "
                    "7-DoF delta labels at the spec's control rate, encoded frames, per-dataset statistics.")
    sub = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    _register_build(sub)
    _register_info(sub)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _register_build(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "build", help="recordings -> dataset (resumable)",
        description="Build a dataset from rosbag2 recordings with a robot's dataset spec (config/datasets/). "
                    "A bag directory, a storage file (.mcap, .db3) or a folder of bag directories may be given. "
                    "Episodes already in --out are skipped; a bag that cannot be read completely is reported "
                    "and skipped.")
    parser.add_argument("inputs", nargs="+", metavar="BAG_OR_DIR", help="recordings")
    parser.add_argument("--spec", required=True, help="dataset spec YAML (e.g. config/datasets/sim_panda.yaml)")
    parser.add_argument("--out", required=True, help="dataset directory (created, or continued)")
    parser.add_argument("--workers", type=int, default=1, help="episodes converted in parallel (processes)")
    parser.add_argument("--keep-damaged", action="store_true",
                        help="use the readable part of a truncated bag instead of skipping it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_build)


def _register_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="what a dataset holds", description="Summarize a dataset directory.")
    parser.add_argument("dataset", metavar="DIR")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run_info)


def _fail(message: str, code: int = 2) -> int:
    print(f"magma-ros dataset: {message}", file=sys.stderr, flush=True)
    return code


def run_build(args: argparse.Namespace) -> int:
    from magma_ros.training.builder import build_dataset
    from magma_ros.training.records import DatasetError
    from magma_ros.training.spec import load_spec

    # the builder reports every damaged bag itself, in one line; the bag reader's own log would repeat it
    logging.getLogger("magma_ros.bags").setLevel(logging.ERROR)
    try:
        spec = load_spec(args.spec)
        summary = build_dataset(args.inputs, spec, args.out, workers=args.workers, keep_damaged=args.keep_damaged,
                                progress=not args.no_progress,
                                report=lambda line: print(f"magma-ros dataset: {line}", file=sys.stderr, flush=True))
    except DatasetError as err:
        return _fail(str(err))
    for line in summary.lines():
        print(line)
    return 1 if summary.skipped else 0


def run_info(args: argparse.Namespace) -> int:
    from magma_ros.training.dataset import TrajectoryDataset
    from magma_ros.training.records import DatasetError

    try:
        data = TrajectoryDataset(args.dataset)
    except DatasetError as err:
        return _fail(str(err))
    actions = data.actions()
    info = {"name": data.name, "episodes": len(data.episode_ids), "steps": len(data),
            "image_format": data.image_format, "q01": list(data.statistics.q01), "q99": list(data.statistics.q99),
            "gripper_open_fraction": float((actions[:, 6] > 0.5).mean()) if len(actions) else 0.0}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{data.root}: dataset {data.name!r}, {info['episodes']} episode(s), {info['steps']} steps, "
          f"{data.image_format} frames")
    print("  q01 " + " ".join(f"{v:+.4f}" for v in data.statistics.q01))
    print("  q99 " + " ".join(f"{v:+.4f}" for v in data.statistics.q99))
    return 0
