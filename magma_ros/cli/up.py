"""`magma-ros up CONFIG.yaml`: start a bringup description's nodes in one process."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="start the nodes of a bringup description in this process",
        description="Start the nodes listed in a bringup description (config/bringup/*.yaml) in one "
                    "process on a multi-threaded executor, with the parameter files the launch files use.")
    parser.add_argument("bringup", help="bringup description, e.g. config/bringup/synthetic.yaml")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_ros.bringup import BringupError, load_bringup
    from magma_ros.ros.bringup_runner import run_bringup

    try:
        bringup = load_bringup(args.bringup)
    except BringupError as err:
        print(f"magma-ros up: {err}")
        return 2
    print(f"magma-ros up: {bringup.description or bringup.source.name} "
          f"({', '.join(n.name for n in bringup.nodes)})")
    return run_bringup(bringup, args.duration)
