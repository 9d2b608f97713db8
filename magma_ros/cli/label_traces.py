"""`magma-ros dataset label-traces DIR`: Trace-of-Mark labels for a dataset (magma_ros.training.trace_labels).

Registered under ``magma-ros dataset`` by :mod:`magma_ros.cli.dataset`. Exit status: 0 when every
episode was labelled (or already was), 1 when some episode could not be read (each reported in
one line), 2 for bad arguments, a directory that is not a dataset, or a tracker that is not
installed.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label-traces", help="Trace-of-Mark labels from point tracks (resumable)",
        description="Track a grid of points through windows of each episode, pick moving and static marks, and "
                    "write Magma's Set-of-Mark images and Trace-of-Mark question/answer pairs to DIR/traces/. "
                    "Episodes already labelled are skipped (--overwrite relabels them).")
    parser.add_argument("dataset", metavar="DIR", help="dataset directory written by `magma-ros dataset build`")
    parser.add_argument("--grid", type=int, default=15, help="query grid side (default 15: 225 points)")
    parser.add_argument("--window", type=int, default=16, help="frames per window (default 16)")
    parser.add_argument("--stride", type=int, default=4, help="steps between window starts (default 4)")
    parser.add_argument("--tracker", default="lk",
                        help="lk (default, OpenCV), cotracker3 (non-commercial licence), bootstapir, or "
                             "package.module:factory; learned trackers must be installed with their weights")
    parser.add_argument("--tracker-weights", metavar="PATH", help="checkpoint of a learned tracker")
    parser.add_argument("--device", default="cpu", help="torch device of a learned tracker (default cpu)")
    parser.add_argument("--foreground-step", type=float, default=1.0,
                        help="mean step (px at 256x256) above which a point moves: 1 for robot data, 2 for video")
    parser.add_argument("--trace-tokens", action="store_true",
                        help="wrap answers' traces in <trace_start> ... <trace_end>")
    parser.add_argument("--marks", choices=("kmeans", "grid"), default="kmeans",
                        help="kmeans (default, Magma's recipe: marks on clusters of moving and static points, random "
                             "ids) or grid: the policy node's trace-query marks (--mark-grid, ids in reading order)")
    parser.add_argument("--mark-grid", default="3x4", metavar="ROWSxCOLS",
                        help="rows x cols of --marks grid (default 3x4, the policy node's)")
    parser.add_argument("--mark-radius", type=float, default=20.0,
                        help="--marks grid: a mark moves with the tracked points within this distance (px at "
                             "256x256, default 20); 0 tracks the mark's own point")
    parser.add_argument("--ignore-region", action="append", default=[], metavar="X0,Y0,X1,Y1|wrist-inset",
                        help="a box of the frame (fractions) that is not the scene's own motion, e.g. a second "
                             "camera's view pasted in; no mark inside it is ever answered. wrist-inset = the sim's "
                             "wrist inset (magma_ros.sim.config.INSET_REGION). Repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed of cluster counts, k-means and mark ids")
    parser.add_argument("--preview", type=int, default=0, metavar="N",
                        help="write the first N labelled windows as PNGs (marks + traces) to DIR/traces/preview/")
    parser.add_argument("--overwrite", action="store_true", help="relabel episodes that already have labels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fail(message: str, code: int = 2) -> int:
    print(f"magma-ros dataset label-traces: {message}", file=sys.stderr, flush=True)
    return code


def parse_region(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` (fractions of the frame) or ``wrist-inset`` (the sim's inset box); ValueError otherwise."""
    if text.strip().lower() in ("wrist-inset", "wrist_inset"):
        from magma_ros.sim.config import INSET_REGION

        return INSET_REGION
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 4:
        raise ValueError(f"expected 4 numbers, got {len(values)}")
    return values  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from magma_ros.training.records import DatasetError
    from magma_ros.training.trace_labels import TraceLabelConfig, label_dataset
    from magma_ros.training.tracking import TrackerConfig, TrackingError

    if args.preview < 0:
        return _fail(f"--preview must be >= 0, got {args.preview}")
    try:
        rows, cols = (int(v) for v in args.mark_grid.lower().split("x"))
    except ValueError:
        return _fail(f"--mark-grid expects ROWSxCOLS (e.g. 3x4), got {args.mark_grid!r}")
    try:
        regions = tuple(parse_region(text) for text in args.ignore_region)
    except ValueError as err:
        return _fail(f"--ignore-region expects X0,Y0,X1,Y1 (fractions of the frame) or wrist-inset: {err}")
    try:
        config = TraceLabelConfig(
            grid_size=args.grid, window=args.window, stride=args.stride, min_window=min(4, args.window),
            foreground_step=args.foreground_step, trace_tokens=args.trace_tokens, seed=args.seed,
            marks=args.marks, mark_grid=(rows, cols), mark_radius=args.mark_radius,
            ignore_regions=regions,
            tracker=TrackerConfig(name=args.tracker, weights=args.tracker_weights, device=args.device))
        summary = label_dataset(args.dataset, config, preview=args.preview, overwrite=args.overwrite,
                                progress=not args.no_progress, report=lambda line: _fail(line, 1))
    except (DatasetError, TrackingError) as err:
        return _fail(str(err))
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0
