"""Realtime regime: the sim bringup as a real arm runs it (sim time follows the wall clock).

config/bringup/sim.yaml with the sim in realtime mode and its camera at 30 Hz (320x240), the
policy acting on the newest frame, the bridge streaming on the wall clock: once with every node
in its own process (``magma-ros up``, as ros2 launch runs them) and once composed in one process
(``magma-ros up --in-process``), side by side in one run. After a warm-up, the nodes' own
/diagnostics are read for a measurement window:

* sim: real-time factor (sim seconds per wall second), camera frames per sim second, render ms;
* policy: actions per second, model ms (p50), frame-to-action latency (p50/p95);
* bridge: deltas received / accepted / rejected as stale.

usage: python bench/realtime_bench.py [--seconds S] [--camera-hz HZ]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_BENCH_DOMAIN_ID", str(121 + os.getpid() % 25))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as magma-ros sets it (see magma_ros/cli/__init__.py)

from magma_ros.bringup import apply_local_dds_profile  # noqa: E402

apply_local_dds_profile()

BRINGUP = "config/bringup/sim.yaml"
WARMUP_S = 8.0


def realtime_bringup(camera_hz: float):  # type: ignore[no-untyped-def]
    from magma_ros.bringup import load_bringup

    bringup = load_bringup(REPO / BRINGUP)
    overrides = {"sim_arm_node": {"mode": "realtime", "camera_rate_hz": camera_hz, "autostart_episode": True,
                                  "continuous": True, "start_paused": False, "diagnostics_period_s": 1.0},
                 "magma_policy_node": {"autostart": True, "diagnostics_period_s": 1.0},
                 "servo_bridge_node": {"autostart": True, "diagnostics_period_s": 1.0}}
    return bringup.with_overrides(overrides)


class Diagnostics:
    """The latest /diagnostics values per node name prefix."""

    def __init__(self, node) -> None:  # type: ignore[no-untyped-def]
        from diagnostic_msgs.msg import DiagnosticArray

        from magma_ros import contract
        from magma_ros.ros.runtime import qos

        self.latest: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        node.create_subscription(DiagnosticArray, contract.DIAGNOSTICS.name, self._on, qos(contract.DIAGNOSTICS))

    def _on(self, msg) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            for status in msg.status:
                self.latest[status.name.split(":")[0]] = {kv.key: kv.value for kv in status.values}

    def get(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self.latest.get(name, {}))


def measure(bringup, separate: bool, seconds: float, log: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import rclpy
    from rclpy.logging import LoggingSeverity

    from magma_ros.ros.bringup_runner import create_nodes, start_processes, stop_processes
    from magma_ros.ros.sim_episodes import RunningGraph, ros_session

    names = {n.executable: n.name for n in bringup.nodes}
    with ros_session():
        processes, nodes = [], []
        with open(log, "a") as out:
            if separate:
                processes = start_processes(bringup, stdout=out.fileno())
            else:
                nodes = create_nodes(bringup)
                for node in nodes:
                    node.get_logger().set_level(LoggingSeverity.ERROR)
        observer = rclpy.create_node("magma_realtime_bench")
        diagnostics = Diagnostics(observer)
        graph = RunningGraph([*nodes, observer])
        try:
            deadline = time.monotonic() + 90.0
            while time.monotonic() < deadline and not all(diagnostics.get(names[e]) for e in names):
                time.sleep(0.2)
            time.sleep(WARMUP_S)  # model loaded, first episodes under way, rolling windows filled
            bridge_before = diagnostics.get(names["servo_bridge_node"])
            time.sleep(seconds)
            sim = diagnostics.get(names["sim_arm_node"])
            policy = diagnostics.get(names["magma_policy_node"])
            bridge = diagnostics.get(names["servo_bridge_node"])
        finally:
            graph.close()
            if processes:
                stop_processes(processes)

    def f(values: dict[str, str], key: str) -> float:
        try:
            return float(values.get(key, "nan"))
        except ValueError:
            return float("nan")

    def grew(key: str) -> float:
        return f(bridge, key) - f(bridge_before, key)

    return {"rtf": f(sim, "real_time_factor"), "camera_hz": f(sim, "camera_hz"), "render_ms": f(sim, "render_ms"),
            "actions_hz": f(policy, "rate_hz"), "model_ms": f(policy, "model_p50_ms"),
            "latency_p50": f(policy, "latency_p50_ms"), "latency_p95": f(policy, "latency_p95_ms"),
            "deltas": grew("received"), "accepted": grew("commands"), "stale": grew("rejected_stale_delta")}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="measurement window after the warm-up")
    parser.add_argument("--camera-hz", type=float, default=30.0, help="the sim camera's rate")
    args = parser.parse_args(argv)
    bringup = realtime_bringup(args.camera_hz)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"realtime sim, camera {args.camera_hz:g} Hz 320x240, {BRINGUP}; {WARMUP_S:g} s warm-up then "
          f"{args.seconds:g} s measured; {os.cpu_count()} CPUs, load average {load:.1f} at start")
    log = Path(tempfile.mkdtemp(prefix="magma_realtime_")) / "nodes.log"
    rows = [("one process per node", measure(bringup, True, args.seconds, log)),
            ("one process (in-process)", measure(bringup, False, args.seconds, log))]
    print(f"{'nodes':<26}{'sim RTF':>8}{'cam Hz':>8}{'render':>8}{'acts/s':>8}{'model':>8}"
          f"{'lat p50':>9}{'lat p95':>9}{'deltas':>8}{'stale':>7}")
    for label, r in rows:
        print(f"{label:<26}{r['rtf']:>8.2f}{r['camera_hz']:>8.1f}{r['render_ms']:>6.0f}ms{r['actions_hz']:>8.1f}"
              f"{r['model_ms']:>6.0f}ms{r['latency_p50']:>7.0f}ms{r['latency_p95']:>7.0f}ms"
              f"{r['deltas']:>8.0f}{r['stale']:>7.0f}")
    print("(sim RTF: sim seconds per wall second, 1.00 = real time; cam Hz: frames per sim second; lat: camera "
          "frame stamp -> action published)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
