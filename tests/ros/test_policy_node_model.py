"""magma_policy_node with a real (tiny) Magma checkpoint on the torch backend, over real DDS."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import Marker, MarkerArray

from magma_ros import contract
from magma_ros.image_codec import image_to_numpy, numpy_to_image
from magma_ros.msg import EndEffectorDelta, Prediction
from magma_ros.ros.policy_node import PolicyNode
from magma_ros.ros.runtime import qos
from tests.ros.harness import RosGraph, wait_for


def stamp(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def test_camera_at_30hz_yields_traceable_outputs_and_drops_old_frames(graph: RosGraph, slow_checkpoint: Path) -> None:
    node = graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("checkpoint", value=str(slow_checkpoint)), Parameter("autostart", value=True),
        Parameter("control_rate_hz", value=0.0), Parameter("base_frame", value="panda_link0"),
        Parameter("diagnostics_period_s", value=0.5)]))
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    deltas = graph.collect(probe, EndEffectorDelta, contract.EE_DELTA.name)
    annotated = graph.collect(probe, Image, contract.ANNOTATED_IMAGE.name, "sensor_data")
    diagnostics = graph.collect(probe, DiagnosticArray, contract.DIAGNOSTICS.name)
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos(contract.CAMERA_IMAGE))
    assert wait_for(lambda: camera.get_subscription_count() > 0, 10)
    rng = np.random.default_rng(0)
    sent = set()
    start = time.monotonic()
    while time.monotonic() - start < 4.0:   # 30 Hz for 4 s
        header = Header(stamp=probe.get_clock().now().to_msg(), frame_id="camera_color_optical_frame")
        camera.publish(numpy_to_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "rgb8", header=header))
        sent.add((header.stamp.sec, header.stamp.nanosec))
        time.sleep(1 / 30)
    assert wait_for(lambda: len(predictions) >= 3 and len(annotated) >= 1, 20)
    time.sleep(1.0)

    # Every output is traceable to a frame the camera sent.
    assert {stamp(p) for p in predictions} <= sent
    assert {stamp(d) for d in deltas} <= {stamp(p) for p in predictions if p.action_valid}
    assert {stamp(a) for a in annotated} <= {stamp(p) for p in predictions}
    valid = [p for p in predictions if p.action_valid]
    assert valid, [p.error for p in predictions]
    for p in valid:
        assert len(p.action_token_ids) == 7 and p.statistics == "bridge_orig"
        assert np.all(np.abs(np.asarray(p.action_normalized)) <= 1.0)
        assert p.prefill_ms > 0 and p.decode_ms > 0 and p.total_ms >= p.decode_ms
    for d in deltas:
        assert d.header.frame_id == "panda_link0" and d.step_period > 0 and d.gripper in (0.0, 1.0)
    assert image_to_numpy(annotated[-1]).shape == (240, 320, 3)

    # Inference is slower than 30 Hz here: newer frames replaced older ones, counted, never queued.
    c = node.counters
    assert np.median([p.preprocess_ms + p.vision_ms + p.prefill_ms + p.decode_ms for p in predictions]) > 1000 / 30
    assert c["dropped_newer_frame"] > 0 and len(predictions) < len(sent)
    assert c["processed"] == len(predictions)
    # Every frame received was answered, replaced by a newer one, or refused: none waits in a queue.
    assert c["received"] == c["processed"] + c["dropped_newer_frame"] + c["stale"] + c["rejected"], c
    # No backlog: a frame waits at most about one inference before its own starts.
    assert max(p.total_ms for p in predictions) < 3 * max(p.preprocess_ms + p.vision_ms + p.prefill_ms + p.decode_ms
                                                         for p in predictions) + 100
    assert wait_for(lambda: any(
        int(dict((kv.key, kv.value) for kv in d.status[0].values).get("dropped_newer_frame", 0)) > 0
        for d in diagnostics), 5)


def test_trace_queries_publish_markers_and_traces(graph: RosGraph, trace_checkpoint) -> None:
    checkpoint, expected = trace_checkpoint
    node = graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("autostart", value=True),
        Parameter("control_rate_hz", value=5.0), Parameter("trace_period_s", value=0.5),
        Parameter("trace_marker_depth_m", value=0.9), Parameter("instruction", value="pick up the red cube")]))
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    markers = graph.collect(probe, MarkerArray, contract.TRACE_MARKERS.name)
    annotated = graph.collect(probe, Image, contract.ANNOTATED_IMAGE.name, "sensor_data")
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos(contract.CAMERA_IMAGE))
    assert wait_for(lambda: camera.get_subscription_count() > 0, 10)
    rng = np.random.default_rng(5)
    sent = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (len(markers) >= 2 and any(p.traces for p in predictions)):
        header = Header(stamp=probe.get_clock().now().to_msg(), frame_id="camera_color_optical_frame")
        camera.publish(numpy_to_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "rgb8", header=header))
        sent.add((header.stamp.sec, header.stamp.nanosec))
        time.sleep(1 / 30)
    assert len(markers) >= 2, node.counters

    # Markers: every update first clears the old ones, then one LINE_STRIP per trace, in the camera frame.
    for array in markers:
        assert array.markers[0].action == Marker.DELETEALL
        assert stamp(array.markers[0]) in sent
    strips = markers[-1].markers[1:]
    assert sorted(m.id for m in strips) == sorted(expected)
    for strip in strips:
        assert strip.type == Marker.LINE_STRIP and strip.header.frame_id == "camera_color_optical_frame"
        assert len(strip.points) == len(expected[strip.id]) == len(strip.colors)
        assert all(abs(p.z - 0.9) < 1e-6 for p in strip.points)   # no depth image: configured depth
    # Predictions carry the parsed traces on the 256 grid, exactly as the model wrote them.
    with_traces = [p for p in predictions if p.traces]
    assert with_traces and {stamp(p) for p in with_traces} <= sent
    traces = {t.mark_id: list(zip(t.grid_x, t.grid_y, strict=True)) for t in with_traces[-1].traces}
    assert traces == {k: [tuple(p) for p in v] for k, v in expected.items()}
    assert len(with_traces[-1].marks) == 12
    assert annotated and {stamp(a) for a in annotated} <= sent


def test_without_the_action_thread_every_frame_is_answered_in_its_callback(graph: RosGraph,
                                                                           slow_checkpoint: Path) -> None:
    """action_thread false (a synchronous simulator): the model runs in the camera callback, so frames are
    answered one by one, in order, none replaced; a malformed frame is dropped and the node goes on."""
    node = graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("checkpoint", value=str(slow_checkpoint)), Parameter("autostart", value=True),
        Parameter("control_rate_hz", value=0.0), Parameter("action_thread", value=False)]))
    assert not node._threads   # no action thread (and no trace thread: trace_period_s is 0)
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos(contract.CAMERA_IMAGE))
    assert wait_for(lambda: camera.get_subscription_count() > 0, 10)
    rng = np.random.default_rng(1)
    sent = []
    for i in range(6):
        header = Header(stamp=probe.get_clock().now().to_msg(), frame_id="camera_color_optical_frame")
        if i == 3:   # 3 bytes short: refused where it is converted, not by the executor
            bad = numpy_to_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "rgb8", header=header)
            bad.data = bytes(bad.data)[:-3]
            camera.publish(bad)
            assert wait_for(lambda: node.counters["rejected"] == 1, 10)
            continue
        camera.publish(numpy_to_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "rgb8", header=header))
        sent.append((header.stamp.sec, header.stamp.nanosec))
        expected = len(sent)
        assert wait_for(lambda expected=expected: len(predictions) == expected, 20)   # answered before the next
    assert [stamp(p) for p in predictions] == sent
    c = node.counters
    assert c["dropped_newer_frame"] == 0 and c["processed"] == 5 and c["received"] == 6, c


def test_gripper_dwell_holds_every_command_change(graph: RosGraph, tiny_checkpoint: Path) -> None:
    """gripper_min_hold_steps over DDS: each published command equals the hysteresis with that dwell
    replayed over the model's raw gripper values (every sample), and the dwell overrides some of the
    model's changes."""
    from magma_ros.codecs import GripperHysteresis

    hold = 3
    graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint)), Parameter("autostart", value=True),
        Parameter("statistics", value="sim_panda"), Parameter("control_rate_hz", value=0.0),
        Parameter("action_thread", value=False), Parameter("gripper_min_hold_steps", value=hold),
        Parameter("max_observation_age_s", value=30.0)]))
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    deltas = graph.collect(probe, EndEffectorDelta, contract.EE_DELTA.name)
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos(contract.CAMERA_IMAGE))
    assert wait_for(lambda: camera.get_subscription_count() > 0, 10)
    rng = np.random.default_rng(1)
    for i in range(40):   # one frame at a time: every frame is answered, in order
        header = Header(stamp=probe.get_clock().now().to_msg(), frame_id="camera_color_optical_frame")
        camera.publish(numpy_to_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "rgb8", header=header))
        assert wait_for(lambda i=i: len(predictions) > i, 20), f"no answer to frame {i}"
    assert wait_for(lambda: len(deltas) == sum(p.action_valid for p in predictions), 5)

    valid = [p for p in predictions if p.action_valid]
    assert len(valid) == 40, [p.error for p in predictions if not p.action_valid]
    replay = GripperHysteresis(0.6, 0.4, min_hold_steps=hold)
    expected = [replay.update(float(p.action[6])) for p in valid]
    assert [p.gripper for p in valid] == expected
    assert [d.gripper for d in deltas] == expected
    plain = GripperHysteresis(0.6, 0.4)
    undwelled = [plain.update(float(p.action[6])) for p in valid]
    assert undwelled != expected, "the model's gripper never changed while a dwell ran: nothing was tested"
    changes = [i for i in range(1, len(expected)) if expected[i] != expected[i - 1]]
    assert all(b - a > hold for a, b in itertools.pairwise(changes)), changes



def test_a_new_instruction_ends_a_gripper_dwell(graph: RosGraph, tiny_checkpoint: Path) -> None:
    """A dwell of 1000 actions starts at the model's first close; after an instruction on the topic the
    next "open" from the model opens the gripper (without the release it would stay shut 1000 steps)."""
    graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint)), Parameter("autostart", value=True),
        Parameter("statistics", value="sim_panda"), Parameter("control_rate_hz", value=0.0),
        Parameter("action_thread", value=False), Parameter("gripper_min_hold_steps", value=1000),
        Parameter("max_observation_age_s", value=30.0)]))
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    camera = probe.create_publisher(Image, contract.CAMERA_IMAGE.name, qos(contract.CAMERA_IMAGE))
    instruction = probe.create_publisher(String, contract.INSTRUCTION.name, qos(contract.INSTRUCTION))
    assert wait_for(lambda: camera.get_subscription_count() > 0 and instruction.get_subscription_count() > 0, 10)
    rng = np.random.default_rng(2)

    def answer() -> Prediction:
        n = len(predictions)
        header = Header(stamp=probe.get_clock().now().to_msg(), frame_id="camera_color_optical_frame")
        camera.publish(numpy_to_image(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "rgb8", header=header))
        assert wait_for(lambda: len(predictions) > n, 20)
        assert predictions[n].action_valid, predictions[n].error
        return predictions[n]

    for _ in range(60):
        if answer().gripper == 0.0:
            break
    assert predictions[-1].gripper == 0.0, "the model never closed the gripper in 60 frames"
    said_open = 0
    for _ in range(10):   # inside the dwell the model's "open" changes nothing
        p = answer()
        assert p.gripper == 0.0
        said_open += p.action[6] >= 0.6
    assert said_open, "the model never said open during the dwell: nothing was tested"
    instruction.publish(String(data="pick up the blue cube"))
    assert wait_for(lambda: answer().instruction == "pick up the blue cube", 20)
    for _ in range(30):
        answer()
    after = [p for p in predictions if p.instruction == "pick up the blue cube"]
    first_open = next(i for i, p in enumerate(after) if p.action[6] >= 0.6)
    assert after[first_open].gripper == 1.0 and all(p.gripper == 0.0 for p in after[:first_open])
