"""magma_policy_node on every CPU backend (torch, onnxruntime) over real DDS: the same
camera -> Prediction -> EndEffectorDelta path, stale and malformed frames; tensorrt without a
GPU fails at configure with a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from magma_ros import contract
from magma_ros.backends import create_backend
from magma_ros.backends.options import BackendOptions
from magma_ros.image_codec import numpy_to_image
from magma_ros.msg import EndEffectorDelta, Prediction
from magma_ros.ros.policy_node import PolicyNode
from magma_ros.ros.runtime import qos
from tests.ros.harness import RosGraph, change_lifecycle_state, lifecycle_state, wait_for

BACKENDS = ("torch", "onnxruntime")
INSTRUCTION = "pick up the red cube"


@pytest.fixture(scope="module")
def export_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the tiny checkpoint for the whole module (the node reuses it)."""
    from magma_ros.backends.exports import resolve_export

    directory, _ = resolve_export(tiny_checkpoint, BackendOptions(export_dir=str(tmp_path_factory.mktemp("onnx"))),
                                  quiet=True)
    return directory


def start(graph: RosGraph, backend: str, checkpoint: Path, export_dir: Path, **overrides: object) -> PolicyNode:
    params = {"backend": backend, "checkpoint": str(checkpoint), "export_dir": str(export_dir),
              "control_rate_hz": 0.0, "autostart": True, "base_frame": "panda_link0", "instruction": INSTRUCTION,
              **overrides}
    return graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()]))  # type: ignore[return-value]


def image(node, rgb: np.ndarray, frame_id: str = "camera_color_optical_frame") -> Image:
    header = Header(stamp=node.get_clock().now().to_msg(), frame_id=frame_id)
    return numpy_to_image(rgb, "rgb8", header=header)


@pytest.mark.parametrize("backend", BACKENDS)
def test_camera_to_prediction_to_delta(graph: RosGraph, tiny_checkpoint: Path, export_dir: Path,
                                       backend: str) -> None:
    node = start(graph, backend, tiny_checkpoint, export_dir)
    assert node._backend is not None and node._backend.model_id.endswith("(onnxruntime)") == (backend == "onnxruntime")
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    deltas = graph.collect(probe, EndEffectorDelta, contract.EE_DELTA.name)
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos("reliable"))
    assert wait_for(lambda: camera.get_subscription_count() > 0, 10)
    frames = [np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8) for i in range(3)]
    sent = {}
    for i, rgb in enumerate(frames):
        msg = image(probe, rgb)
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = i
        camera.publish(msg)
        assert wait_for(lambda i=i: len(predictions) > i, 30), node.counters
    assert wait_for(lambda: len(deltas) >= 3, 5), [p.error for p in predictions]
    # Same tokens as the torch backend computes for the very frame each prediction came from.
    reference = create_backend("torch", str(tiny_checkpoint))
    for p in predictions:
        key = (p.header.stamp.sec, p.header.stamp.nanosec)
        assert p.action_valid, p.error
        expected = reference.act(frames[sent[key]], INSTRUCTION)
        assert tuple(p.action_token_ids) == expected.token_ids
        assert np.allclose(p.action, expected.action, atol=1e-6)
    for d in deltas:
        assert d.header.frame_id == "panda_link0" and (d.header.stamp.sec, d.header.stamp.nanosec) in sent


@pytest.mark.parametrize("backend", BACKENDS)
def test_stale_and_malformed_frames(graph: RosGraph, tiny_checkpoint: Path, export_dir: Path, backend: str) -> None:
    node = start(graph, backend, tiny_checkpoint, export_dir, max_observation_age_s=0.3)
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    deltas = graph.collect(probe, EndEffectorDelta, contract.EE_DELTA.name)
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos("reliable"))
    assert wait_for(lambda: camera.get_subscription_count() > 0, 10)
    rgb = np.random.default_rng(7).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    old = image(probe, rgb, "old")
    old.header.stamp.sec -= 5
    camera.publish(old)
    assert wait_for(lambda: node.counters["stale"] == 1, 5.0), node.counters
    for i, bad in enumerate([dict(encoding="yuv_weird"), dict(width=0), dict(data=b"\x00" * 5)]):
        msg = image(probe, rgb, f"bad{i}")
        for key, value in bad.items():
            setattr(msg, key, value)
        camera.publish(msg)
        # one at a time: the node acts on the newest frame only, so a burst would replace, not reject
        assert wait_for(lambda i=i: node.counters["rejected"] == i + 1, 5.0), node.counters
    assert predictions == [] and deltas == []
    camera.publish(image(probe, rgb, "good"))
    assert wait_for(lambda: len(deltas) == 1, 30), node.counters
    assert [p.header.frame_id for p in predictions] == ["good"] and predictions[0].action_valid


def test_tensorrt_without_a_gpu_fails_configure_with_the_reason(graph: RosGraph, tiny_checkpoint: Path,
                                                                export_dir: Path) -> None:
    node = start(graph, "tensorrt", tiny_checkpoint, export_dir, autostart=False)
    probe = graph.node("probe")
    ok = change_lifecycle_state(probe, contract.PolicyNodeParameters.NODE_NAME, "configure")
    assert not ok
    assert node._backend is None
    assert lifecycle_state(probe, contract.PolicyNodeParameters.NODE_NAME) == "unconfigured"


def _closed_loop_trajectory(graph: RosGraph, checkpoint: Path, policy_params: dict[str, object], seed: int,
                            ) -> np.ndarray:
    """One synchronous sim -> policy -> bridge episode (what `magma-ros evaluate` runs): EE poses."""
    from geometry_msgs.msg import PoseStamped

    from magma_ros.bringup import load_bringup
    from magma_ros.ros.bringup_runner import node_class
    from magma_ros.ros.sim_episodes import ClosedLoop, synchronous_loop_overrides
    from tests.ros.test_record_evaluate import REPO
    from tests.ros.test_sim_arm_node import Collector, seconds

    bringup = load_bringup(REPO / "config" / "bringup" / "sim.yaml")
    extra = synchronous_loop_overrides(str(checkpoint))
    # the built-in statistics set (not the checkpoint's sim_panda): any published set decodes an untrained model
    extra["magma_policy_node"].update({"statistics": "bridge_orig", **policy_params})
    for launch in bringup.nodes:
        overrides = [Parameter(k, value=v) for k, v in {**launch.overrides, **extra.get(launch.executable, {})}.items()]
        graph.add(node_class(launch.executable)(context=graph.context, cli_args=launch.ros_args(),
                                                parameter_overrides=overrides))
    loop = ClosedLoop(graph.node("control"), "sim_arm_node", "magma_policy_node", "servo_bridge_node")
    assert loop.wait_for_discovery()
    poses = Collector(graph.node("observer"), PoseStamped, contract.EE_POSE)
    status = loop.prepare(seed, "reach", max_steps=5)
    final = loop.run(status, timeout=120.0)
    assert final.step == 5
    wait_for(lambda: seconds(poses()[-1]) >= final.time, 5.0)
    loop.stop()
    start_ns = round(status.start_time * 1e9)
    return np.array([(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec - start_ns, p.pose.position.x,
                      p.pose.position.y, p.pose.position.z, p.pose.orientation.x, p.pose.orientation.y,
                      p.pose.orientation.z, p.pose.orientation.w)
                     for p in poses() if seconds(p) >= status.start_time])


@pytest.fixture(scope="module")
def torch_trajectory(tiny_checkpoint: Path) -> np.ndarray:
    from tests.ros.harness import RosGraph as Graph

    graph = Graph()
    try:
        return _closed_loop_trajectory(graph, tiny_checkpoint, {}, seed=4)
    finally:
        graph.close()


def test_evaluate_loop_on_onnxruntime_gives_the_torch_trajectory(graph: RosGraph, tiny_checkpoint: Path,
                                                                 export_dir: Path, torch_trajectory: np.ndarray,
                                                                 ) -> None:
    """Same seed, greedy decoding, the closed loop `magma-ros evaluate --backend onnxruntime` runs."""
    ort = _closed_loop_trajectory(graph, tiny_checkpoint, {"backend": "onnxruntime", "export_dir": str(export_dir)},
                                  seed=4)
    assert len(ort) == 5 + 1 and np.ptp(ort[:, 1:4], axis=0).max() > 0.005  # one state per control step
    np.testing.assert_array_equal(ort, torch_trajectory)


def test_evaluate_cli_passes_the_backend_to_the_policy_node() -> None:
    import argparse

    from magma_ros.cli.evaluate import backend_parameters, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--backend", "onnxruntime", "--export-dir", "/x", "--num-threads", "1"])
    assert backend_parameters(args) == {"backend": "onnxruntime", "export_dir": "/x", "num_threads": 1}
    assert backend_parameters(parser.parse_args(["evaluate"])) == {}   # the bringup's policy config decides
    # an explicit --backend torch overrides a configuration that says onnxruntime (it used to be dropped)
    assert backend_parameters(parser.parse_args(["evaluate", "--backend", "torch"])) == {"backend": "torch"}
