"""`magma-ros demo`: bring up the stack on the embedded default and report what it did."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on the embedded default (what `make demo` runs)")
    parser.add_argument("--bringup", default="config/bringup/synthetic.yaml", help="bringup description to run")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds to run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import threading

    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.task import Future

    from magma_ros import contract
    from magma_ros.bringup import load_bringup
    from magma_ros.msg import Prediction
    from magma_ros.ros.bringup_runner import create_nodes
    from magma_ros.ros.runtime import message_type, qos

    bringup = load_bringup(args.bringup)
    print(f"magma-ros demo: {bringup.description}")
    print("  status: the camera -> policy path runs; with backend 'none' no model is loaded yet, so every")
    print("  Prediction reports 'no model' and nothing is commanded.")
    rclpy.init()
    nodes: list = []
    predictions: list[Prediction] = []
    frames = [0]
    lock = threading.Lock()
    try:
        nodes = create_nodes(bringup)
        probe = rclpy.create_node("magma_demo_probe")

        def on_prediction(msg: Prediction) -> None:
            with lock:
                predictions.append(msg)

        def on_frame(_msg: object) -> None:
            frames[0] += 1

        probe.create_subscription(Prediction, contract.PREDICTION.name, on_prediction, qos(contract.PREDICTION))
        probe.create_subscription(message_type(contract.CAMERA_IMAGE), contract.CAMERA_IMAGE.name, on_frame,
                                  qos(contract.CAMERA_IMAGE))
        executor = MultiThreadedExecutor(num_threads=4)
        for node in [*nodes, probe]:
            executor.add_node(node)
        executor.spin_until_future_complete(Future(), timeout_sec=args.duration)
        policy = next((n for n in nodes if hasattr(n, "counters")), None)
        counters = dict(policy.counters) if policy is not None else {}
        executor.shutdown(timeout_sec=2.0)
    finally:
        for node in nodes:
            getattr(node, "close", lambda: None)()
        rclpy.try_shutdown()
    with lock:
        got = list(predictions)
    print(f"\n  ran {args.duration:.0f} s: {frames[0]} camera frames seen, {len(got)} Predictions published")
    if got:
        totals = np.array([p.total_ms for p in got])
        valid = sum(p.action_valid for p in got)
        print(f"  frame -> Prediction: p50 {np.percentile(totals, 50):.1f} ms, p95 {np.percentile(totals, 95):.1f} ms")
        print(f"  valid actions: {valid}/{len(got)}; last error: {got[-1].error or '-'}")
    if counters:
        print("  policy counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    return 0 if got else 1
