"""`magma-ros up CONFIG.yaml`: start a bringup description's nodes, each in its own process (as ros2 launch does)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="start the nodes of a bringup description (one process per node)",
        description="Start the nodes listed in a bringup description (config/bringup/*.yaml) with the parameter "
                    "files the launch files use: each node in its own process, as ros2 launch does (a model step, "
                    "a render and the Servo stream never share one interpreter), or all in this process with "
                    "--in-process. Ctrl-C or SIGTERM stops every node cleanly.")
    parser.add_argument("bringup", help="bringup description, e.g. config/bringup/synthetic.yaml")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")
    parser.add_argument("--in-process", action="store_true",
                        help="compose every node in this process on one executor")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magma_ros.bringup import BringupError, load_bringup

    try:
        bringup = load_bringup(args.bringup)
    except BringupError as err:
        print(f"magma-ros up: {err}")
        return 2
    print(f"magma-ros up: {bringup.description or bringup.source.name} "
          f"({', '.join(n.name for n in bringup.nodes)}){' in one process' if args.in_process else ''}", flush=True)
    if args.in_process:
        from magma_ros.ros.bringup_runner import run_bringup

        return run_bringup(bringup, args.duration)
    from magma_ros.ros.bringup_runner import run_bringup_processes

    return run_bringup_processes(bringup, args.duration, say=lambda text: print(text, flush=True))
