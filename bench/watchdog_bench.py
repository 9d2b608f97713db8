"""Servo bridge watchdog under load: first zero twist after the policy goes silent.

Starts servo_bridge_node (defaults: watchdog 0.2 s, stream 50 Hz) in its own process, a CPU
hog beside it (a torch matmul loop on every core), and runs silence trials from a probe in
this process: a few deltas of 1 s steps (so only the watchdog can end them), then nothing.
Per trial: the time from publishing the last delta to the bridge sending (its stamp) and to
the probe receiving the first zero twist. Target: sent <= watchdog_timeout_s + one stream
period. Also: the longest gap between consecutive twists while a trial streams (the stream must
not stall while deltas arrive), and the bridge's own worst tick lateness and publish time.

usage: python bench/watchdog_bench.py [--trials N] [--no-hog] [--hog-threads N] [--source DIR]
(--source: run the bridge from another checkout's magma_ros, e.g. an older commit, to compare)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_BENCH_DOMAIN_ID", str(161 + os.getpid() % 30))

from magma_ros.bringup import apply_local_dds_profile  # noqa: E402

apply_local_dds_profile()

HOG = ("import torch, sys\n"
       "torch.set_num_threads(int(sys.argv[1]))\n"
       "a = torch.randn(768, 768)\n"
       "while True:\n"
       "    a = torch.tanh(a @ a)\n")


def spawn(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env, cwd=cwd)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def percentiles(values: list[float]) -> str:
    a = np.asarray(values) * 1e3
    return f"p50 {np.percentile(a, 50):6.1f}  p99 {np.percentile(a, 99):6.1f}  worst {a.max():6.1f} ms"


def run(trials: int, hog_threads: int, source: str = "") -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped

    from magma_ros import contract
    from magma_ros.contract import ServoBridgeParameters
    from magma_ros.msg import EndEffectorDelta
    from magma_ros.ros.runtime import make_executor, qos

    defaults = ServoBridgeParameters()
    bound = defaults.watchdog_timeout_s + 1.0 / defaults.stream_rate_hz
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH", "")])))
    bridge = spawn([sys.executable, "-c", "import sys; from magma_ros.ros.servo_bridge_node import main; "
                    "sys.exit(main())", "--ros-args", "-p", "autostart:=true", "-p", "workspace_enabled:=false",
                    "-p", "diagnostics_period_s:=0.5"], env, cwd=source or None)
    hog = spawn([sys.executable, "-c", HOG, str(hog_threads)]) if hog_threads > 0 else None
    rclpy.init()
    node = rclpy.create_node("watchdog_bench_probe")
    twists: list[tuple[int, int, bool]] = []  # (received ns, stamp ns, zero)
    diagnostics: dict[str, str] = {}
    lock = threading.Lock()

    def on_twist(msg: Any, info: Any) -> None:
        t = msg.twist
        zero = not any((t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))
        with lock:
            twists.append((info["received_timestamp"], msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, zero))

    def on_diagnostics(msg: Any) -> None:
        if msg.status and msg.status[0].name.startswith(defaults.NODE_NAME):
            diagnostics.update({kv.key: kv.value for kv in msg.status[0].values})

    node.create_subscription(TwistStamped, contract.SERVO_TWIST.name, on_twist, qos(contract.SERVO_TWIST))
    node.create_subscription(DiagnosticArray, contract.DIAGNOSTICS.name, on_diagnostics, qos(contract.DIAGNOSTICS))
    deltas = node.create_publisher(EndEffectorDelta, contract.EE_DELTA.name, qos(contract.EE_DELTA))
    executor = make_executor(1)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def delta() -> EndEffectorDelta:
        msg = EndEffectorDelta()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = defaults.base_frame
        msg.dx, msg.gripper, msg.step_period = 0.02, 1.0, 1.0
        return msg

    sent: list[float] = []
    received: list[float] = []
    gaps: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while not (deltas.get_subscription_count() > 0 and diagnostics) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not diagnostics:
            print("the bridge did not come up")
            return 1
        time.sleep(1.0)  # the hog warms up too
        started = time.monotonic()
        for trial in range(trials):
            trial_start = time.time_ns()
            for _ in range(3):
                deltas.publish(delta())
                time.sleep(0.05)
            last = time.time_ns()
            deltas.publish(delta())
            end = time.monotonic() + 3.0
            first: tuple[int, int, bool] | None = None
            while first is None and time.monotonic() < end:
                time.sleep(0.005)
                with lock:
                    first = next((t for t in twists if t[2] and t[1] > last), None)
            if first is None:
                print(f"trial {trial}: no zero twist within 3 s")
                return 1
            received.append((first[0] - last) * 1e-9)
            sent.append((first[1] - last) * 1e-9)
            with lock:
                stamps = sorted(t[1] for t in twists if trial_start < t[1] <= first[1])
            gaps.append(max(np.diff(stamps), default=0) * 1e-9)
            time.sleep(0.15)
            if (trial + 1) % 20 == 0:
                print(f"  {trial + 1}/{trials} trials, {time.monotonic() - started:.0f} s: worst so far "
                      f"{max(sent) * 1e3:.1f} ms sent, {max(received) * 1e3:.1f} ms received", flush=True)
        time.sleep(0.6)  # one more diagnostics message
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
        if hog is not None:
            stop(hog)
        stop(bridge)
    load = f"CPU hog: torch matmul loop, {hog_threads} threads on {os.cpu_count()} cores" if hog_threads else "no hog"
    print(f"servo_bridge_node watchdog, {trials} silence trials ({load}); bound {bound * 1e3:.0f} ms "
          f"(watchdog {defaults.watchdog_timeout_s * 1e3:.0f} ms + one {1e3 / defaults.stream_rate_hz:.0f} ms tick)")
    print(f"  first zero sent (bridge stamp):  {percentiles(sent)}")
    print(f"  first zero received (probe):     {percentiles(received)}")
    print(f"  longest gap while streaming:     {percentiles(gaps)} (one tick: {1e3 / defaults.stream_rate_hz:.0f} ms)")
    print(f"  bridge diagnostics: stream thread SCHED_FIFO priority {diagnostics.get('stream_thread_priority')}, "
          f"worst tick lateness {diagnostics.get('tick_late_max_ms')} ms, worst publish "
          f"{diagnostics.get('publish_max_ms')} ms, late ticks skipped {diagnostics.get('late_ticks')}, "
          f"watchdog trips {diagnostics.get('watchdog_trips')}")
    verdict = "within" if max(sent) <= bound else "OVER"
    print(f"  worst case {max(sent) * 1e3:.1f} ms: {verdict} the bound")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--no-hog", action="store_true", help="measure without the CPU hog")
    parser.add_argument("--hog-threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--source", default="", help="directory holding another magma_ros source tree")
    args = parser.parse_args(argv if argv is not None else [])
    return run(args.trials, 0 if args.no_hog else args.hog_threads, args.source)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
