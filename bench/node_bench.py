"""Policy node overhead: image received -> Prediction published, minus model time.

Runs the real stack in separate processes (synthetic camera, magma_policy_node on the
torch backend with the embedded default checkpoint) and reads each Prediction's
``total_ms`` (frame received by the node -> Prediction published) minus its model
stages (preprocess + vision + prefill + decode). The camera runs slower than inference
so frames never wait behind the previous one: what remains is the node's own cost.
The node's diagnostics split that cost into queue (callback -> action thread),
convert (message -> RGB array) and publish (Prediction + EndEffectorDelta messages);
stamp->pub is the whole path from the camera's stamp (incl. DDS transport) to publishing.

usage: python bench/node_bench.py [--frames N] [--rate HZ]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_BENCH_DOMAIN_ID", str(201 + os.getpid() % 30))

from magma_ros.bringup import apply_local_dds_profile  # noqa: E402

apply_local_dds_profile()

SIZES = ((640, 480), (1280, 720))
DIAGNOSTIC_KEYS = ("latency_p50_ms", "queue_p50_ms", "convert_p50_ms", "publish_p50_ms", "queue_p95_ms",
                   "convert_p95_ms", "publish_p95_ms")


def spawn(*argv: str) -> subprocess.Popen:
    exe = str(Path(sys.executable).parent / argv[0])
    return subprocess.Popen([exe, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def measure(width: int, height: int, frames: int, rate: float) -> dict[str, float]:
    import rclpy
    import rclpy.executors
    from diagnostic_msgs.msg import DiagnosticArray

    from magma_ros import contract
    from magma_ros.msg import Prediction
    from magma_ros.ros.runtime import qos

    policy = spawn("magma_policy_node", "--ros-args", "-p", "autostart:=true", "-p", "control_rate_hz:=0.0",
                   "-p", "diagnostics_period_s:=1.0")
    camera = spawn("synthetic_camera_node", "--ros-args", "-p", f"width:={width}", "-p", f"height:={height}",
                   "-p", f"rate_hz:={rate}")
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("node_bench", context=context)
    predictions: list[Prediction] = []
    diagnostics: list[dict[str, str]] = []
    node.create_subscription(Prediction, contract.PREDICTION.name, predictions.append, qos(contract.PREDICTION))
    node.create_subscription(DiagnosticArray, contract.DIAGNOSTICS.name,
                             lambda m: diagnostics.append({kv.key: kv.value for kv in m.status[0].values}),
                             qos(contract.DIAGNOSTICS))
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + 120 + frames / rate * 2
    warmup = 5
    try:
        while len(predictions) < frames + warmup and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        diagnostics.clear()   # the next report covers the measured frames
        while not diagnostics and time.monotonic() < deadline + 5:
            executor.spin_once(timeout_sec=0.1)
    finally:
        stop(camera)
        stop(policy)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    sample = [p for p in predictions[warmup:] if p.action_valid]
    if not sample:
        raise RuntimeError("no valid predictions received")
    total = np.array([p.total_ms for p in sample])
    model = np.array([p.preprocess_ms + p.vision_ms + p.prefill_ms + p.decode_ms for p in sample])
    overhead = total - model
    last = diagnostics[-1] if diagnostics else {}
    return {"n": len(sample), "overhead_p50": float(np.percentile(overhead, 50)),
            "overhead_p95": float(np.percentile(overhead, 95)), "model_p50": float(np.percentile(model, 50)),
            "total_p50": float(np.percentile(total, 50)),
            **{k: float(last.get(k, "nan")) for k in DIAGNOSTIC_KEYS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="camera rate (below the model's rate)")
    args = parser.parse_args(argv)
    from magma_ros.backends.default_checkpoint import default_checkpoint

    _, description = default_checkpoint()   # build the default once, outside the timing
    print(f"checkpoint: {description}; camera {args.rate} Hz; {args.frames} frames per size")
    print(f"{'size':>10} {'overhead p50':>13} {'p95':>7} | {'queue':>6} {'convert':>8} {'publish':>8} (p50 ms)"
          f" | {'model p50':>9} {'total p50':>9} {'stamp->pub':>10}")
    for width, height in SIZES:
        r = measure(width, height, args.frames, args.rate)
        print(f"{width}x{height:<5} {r['overhead_p50']:>10.2f} ms {r['overhead_p95']:>7.2f} | "
              f"{r['queue_p50_ms']:>6.2f} {r['convert_p50_ms']:>8.2f} {r['publish_p50_ms']:>8.2f}"
              f" | {r['model_p50']:>9.1f} {r['total_p50']:>9.1f} {r['latency_p50_ms']:>10.1f}   (n={r['n']})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
