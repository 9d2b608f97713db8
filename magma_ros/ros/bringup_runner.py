"""Start the nodes of a bringup description (``magma-ros up``): one process per node, or all in this one.

By default each node runs in its own process, as ``ros2 launch`` does, so a model step, a
render and the Servo stream never share one interpreter (one GIL). The children get the
same ROS arguments a launch file would give them, their own process group (the parent
forwards SIGINT/SIGTERM once, so every node's ``close()`` runs) and die with the parent
(``PR_SET_PDEATHSIG`` on Linux). ``python -m magma_ros.ros.bringup_runner EXECUTABLE
--ros-args ...`` is how a child starts: the executable's ``main`` from
:mod:`magma_ros.executables`, no installed console script needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rclpy.node import Node

from magma_ros.bringup import Bringup, NodeLaunch, apply_local_dds_profile
from magma_ros.executables import NODES
from magma_ros.ros.runtime import spin_nodes

STOP_TIMEOUT_S = 15.0
"""How long a node process gets to close after SIGINT before it is killed."""


def node_class(executable: str) -> type[Node]:
    """The Node class behind an executable (its module's ``NODE``)."""
    module_name = NODES[executable].split(":")[0]
    return importlib.import_module(module_name).NODE


def create_nodes(bringup: Bringup) -> list[Node]:
    """Construct every node with the same ROS arguments a launch file would give it."""
    return [node_class(n.executable)(cli_args=n.ros_args()) for n in bringup.nodes]


def run_bringup(bringup: Bringup, duration_s: float = 0.0, threads: int = 1) -> int:
    """All nodes in this process on one executor, until Ctrl-C (or ``duration_s`` seconds when > 0)."""
    factories = [functools.partial(node_class(n.executable), cli_args=n.ros_args()) for n in bringup.nodes]
    return spin_nodes(factories, args=[], threads=threads, duration_s=duration_s)


# -- one process per node ------------------------------------------------------------------
def node_command(launch: NodeLaunch) -> list[str]:
    """The command line that runs one node of a bringup in a process of its own."""
    return [sys.executable, "-m", __name__, launch.executable, *launch.ros_args()]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class NodeProcess:
    launch: NodeLaunch
    proc: subprocess.Popen
    stopped: bool = field(default=False)

    @property
    def name(self) -> str:
        return self.launch.name


def start_processes(bringup: Bringup, env: dict[str, str] | None = None,
                    stdout: int | None = None) -> list[NodeProcess]:
    """Start every node of ``bringup`` in its own process (same ROS domain, same DDS profile)."""
    child_env = dict(os.environ if env is None else env)
    apply_local_dds_profile(child_env)  # camera frames cross processes: bigger shared-memory segments
    # spinning OpenMP threads in the model's process would take the CPU the sim renders with
    child_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    processes = []
    try:
        for launch in bringup.nodes:
            proc = subprocess.Popen(node_command(launch), env=child_env, start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                                    stdout=stdout, stderr=subprocess.STDOUT if stdout is not None else None)
            processes.append(NodeProcess(launch, proc))
    except OSError:
        stop_processes(processes)
        raise
    return processes


def stop_processes(processes: Sequence[NodeProcess], timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
    """SIGINT to each running node (its ``close()`` runs), SIGKILL after ``timeout_s``; exit codes by name."""
    for p in processes:
        if p.proc.poll() is None and not p.stopped:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGINT)
            p.stopped = True
    deadline = time.monotonic() + timeout_s
    codes = {}
    for p in processes:
        try:
            codes[p.name] = p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            codes[p.name] = p.proc.wait()
    return codes


def run_bringup_processes(bringup: Bringup, duration_s: float = 0.0, say=print) -> int:  # type: ignore[no-untyped-def]
    """One process per node until Ctrl-C/SIGTERM (or ``duration_s`` > 0): 0 when all stopped cleanly.

    A node that exits on its own (bad parameters, a crash) ends the bringup: the others are
    stopped and the exit code is 1.
    """
    stop_requested: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes: list[NodeProcess] = []
    try:
        processes = start_processes(bringup)
        say(f"magma-ros up: {len(processes)} processes: "
            + ", ".join(f"{p.name} (pid {p.proc.pid})" for p in processes))
        deadline = time.monotonic() + duration_s if duration_s > 0 else None
        failed: NodeProcess | None = None
        while not stop_requested and (deadline is None or time.monotonic() < deadline):
            failed = next((p for p in processes if p.proc.poll() is not None), None)
            if failed is not None:
                break
            time.sleep(0.1)
        if failed is not None:
            say(f"magma-ros up: {failed.name} exited with code {failed.proc.returncode}; stopping the others")
        codes = stop_processes(processes)
        if failed is not None:
            return 1
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            say(f"magma-ros up: not stopped cleanly: {unclean}")
            return 1
        return 0
    finally:
        stop_processes(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m magma_ros.ros.bringup_runner EXECUTABLE [--ros-args ...]``: run one node executable."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in NODES:
        print(f"usage: python -m {__name__} EXECUTABLE [--ros-args ...]; executables: {', '.join(sorted(NODES))}",
              file=sys.stderr)
        return 2
    module_name, function = NODES[args[0]].split(":")
    return int(getattr(importlib.import_module(module_name), function)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
