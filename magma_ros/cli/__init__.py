"""The `magma-ros` command line: one module per subcommand.

Each module listed in SUBCOMMANDS exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed namespace, returns an exit code).
Modules are imported lazily so `magma-ros --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand module (magma_ros.cli.<name>) for each subcommand, in help order
SUBCOMMANDS: tuple[str, ...] = ("predict", "demo", "up", "replay", "record_demos", "evaluate", "dataset", "train",
                                  "evaluate_offline", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magma-ros", description="Magma VLA policy for ROS 2.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from magma_ros.bringup import apply_local_dds_profile

    apply_local_dds_profile()
    # OpenMP threads that spin between parallel regions starve whatever shares the CPU (the sim's
    # render, the other nodes): on 2 cores a 16 ms model step took 0.6 s. Sleep instead (before torch loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
