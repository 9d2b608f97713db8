"""Executors: how late callbacks run, and how long other threads wait, single- vs multi-threaded.

Every node here spins on :func:`magma_ros.ros.runtime.make_executor`; this section shows why
the default is single-threaded. One process, one node with a 50 Hz timer (as a pose publisher
or a sim tick would be) and a subscription, spinning in a background thread on the executor
under test; the main thread publishes 20 messages per second to that subscription from a
second rclpy context (real DDS) and sleeps 50 ms between them, as a test probe or a node's own
worker thread does. Measured per message:

* callback delay: DDS receive time -> the subscription's callback running;
* sleep overshoot: how much longer than 50 ms the main thread's ``time.sleep(0.05)`` took
  (time waiting for the GIL after the sleep ended).

Both executors run twice, alternating, in the same run. On an idle 2-core machine, rclpy's
multi-threaded executor delayed callbacks by tens of ms (up to 160 ms) and kept the main thread
from the GIL for up to 0.5 s; the single-threaded one answers within a few ms.

usage: python bench/executor_bench.py [--messages N]
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
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_BENCH_DOMAIN_ID", str(146 + os.getpid() % 25))


def measure(threads: int, messages: int) -> tuple[list[float], list[float]]:
    """(callback delays ms, sleep overshoots ms) with the node spinning on ``make_executor(threads)``."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Header

    from magma_ros.ros.runtime import make_executor

    profile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node_ctx, pub_ctx = rclpy.Context(), rclpy.Context()
    rclpy.init(context=node_ctx)
    rclpy.init(context=pub_ctx)
    delays: list[float] = []
    overshoots: list[float] = []
    lock = threading.Lock()

    def on_message(msg: Header, info: dict) -> None:
        delay = (time.time_ns() - info["received_timestamp"]) * 1e-6
        with lock:
            delays.append(delay)

    node = rclpy.create_node("executor_bench_node", context=node_ctx)
    node.create_subscription(Header, "/executor_bench", on_message, profile)
    ticks = node.create_publisher(Header, "/executor_bench_ticks", 10)
    node.create_timer(0.02, lambda: ticks.publish(Header()))
    executor = make_executor(threads, node_ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    publisher_node = rclpy.create_node("executor_bench_publisher", context=pub_ctx)
    pub = publisher_node.create_publisher(Header, "/executor_bench", profile)
    try:
        deadline = time.monotonic() + 30.0
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(messages):
            pub.publish(Header())
            before = time.monotonic()
            time.sleep(0.05)
            overshoots.append((time.monotonic() - before - 0.05) * 1e3)
        deadline = time.monotonic() + 5.0
        while len(delays) < messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
        publisher_node.destroy_node()
        rclpy.try_shutdown(context=node_ctx)
        rclpy.try_shutdown(context=pub_ctx)
    return delays, overshoots


def summary(values: list[float]) -> str:
    import numpy as np

    a = np.asarray(values)
    return f"p50 {np.percentile(a, 50):6.1f}  p99 {np.percentile(a, 99):6.1f}  worst {a.max():6.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60, help="messages per measurement")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.messages} messages at 20 Hz per run, each executor twice; {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at start")
    results: dict[str, tuple[list[float], list[float]]] = {"single-threaded": ([], []), "multi-threaded (2)": ([], [])}
    for _ in range(2):
        for label, threads in (("single-threaded", 1), ("multi-threaded (2)", 2)):
            delays, overshoots = measure(threads, args.messages)
            results[label][0].extend(delays)
            results[label][1].extend(overshoots)
    for label, (delays, overshoots) in results.items():
        print(f"{label:<20} received {len(delays)} of {2 * args.messages}")
        print(f"  callback delay (ms)   {summary(delays)}")
        print(f"  sleep overshoot (ms)  {summary(overshoots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
