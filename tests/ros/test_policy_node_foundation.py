"""magma_policy_node over real DDS: frames in, Predictions out, bad frames survived."""

from __future__ import annotations

import numpy as np
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from magma_ros import contract
from magma_ros.image_codec import numpy_to_image
from magma_ros.msg import EndEffectorDelta, Prediction
from magma_ros.ros.policy_node import PolicyNode
from magma_ros.ros.runtime import qos
from magma_ros.srv import SetInstruction
from tests.ros.harness import RosGraph, change_lifecycle_state, lifecycle_state, wait_for


def policy(graph: RosGraph, **overrides: object) -> PolicyNode:
    params = {"backend": "none", "control_rate_hz": 0.0, "autostart": True, **overrides}
    return graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()]))  # type: ignore[return-value]


def frame(node, seq: int) -> Image:
    header = Header(stamp=node.get_clock().now().to_msg(), frame_id=f"cam{seq}")
    return numpy_to_image(np.full((48, 64, 3), seq % 255, np.uint8), "rgb8", header=header)


def test_publishes_one_prediction_per_frame_with_source_header(graph: RosGraph) -> None:
    node = policy(graph)
    test = graph.node("probe")
    predictions = graph.collect(test, Prediction, contract.PREDICTION.name)
    deltas = graph.collect(test, EndEffectorDelta, contract.EE_DELTA.name)
    pub = test.create_publisher(Image, contract.CAMERA_IMAGE.name, qos(contract.CAMERA_IMAGE))
    assert wait_for(lambda: pub.get_subscription_count() > 0 and node._prediction_pub.get_subscription_count() > 0,
                    10)
    sent = []
    for i in range(10):
        msg = frame(test, i)
        sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id))
        pub.publish(msg)
        wait_for(lambda i=i: len(predictions) > i, 2.0)
    assert wait_for(lambda: len(predictions) >= 10, 5.0)
    got = [(p.header.stamp.sec, p.header.stamp.nanosec, p.header.frame_id) for p in predictions]
    assert got == sent
    # No model: every prediction says so and nothing is commanded.
    assert all(not p.action_valid and "no model" in p.error for p in predictions)
    assert deltas == []
    assert node.counters["processed"] == 10


def test_survives_a_burst_of_malformed_frames(graph: RosGraph) -> None:
    node = policy(graph)
    test = graph.node("probe")
    predictions = graph.collect(test, Prediction, contract.PREDICTION.name)
    pub = test.create_publisher(Image, contract.CAMERA_IMAGE.name, qos("reliable"))
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    bad_kinds = [dict(encoding="yuv_weird"), dict(width=0), dict(step=3), dict(data=b"\x00" * 5),
                 dict(encoding="16UC1"), dict(is_bigendian=3)]
    for i in range(30):
        msg = frame(test, i)
        for key, value in bad_kinds[i % len(bad_kinds)].items():
            setattr(msg, key, value)
        pub.publish(msg)
        wait_for(lambda i=i: node.counters["rejected"] > i, 1.0)
    assert wait_for(lambda: node.counters["rejected"] == 30, 5.0), node.counters
    assert predictions == []  # nothing published for a bad frame
    good = frame(test, 99)
    pub.publish(good)
    assert wait_for(lambda: len(predictions) == 1, 5.0)
    assert predictions[0].header.frame_id == "cam99"


def test_frames_with_bad_stamps_are_dropped_where_they_enter(graph: RosGraph) -> None:
    # rclpy's Time.from_msg raises on a negative stamp: checked on entry (magma_ros.stamps), not by a catch-all.
    node = policy(graph)
    test = graph.node("probe")
    predictions = graph.collect(test, Prediction, contract.PREDICTION.name)
    pub = test.create_publisher(Image, contract.CAMERA_IMAGE.name, qos("reliable"))
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    for sec, nanosec in [(-1, 0), (-2**31, 999), (0, 0), (5, 1_500_000_000)]:
        msg = frame(test, 1)
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
        pub.publish(msg)
    assert wait_for(lambda: node.counters["bad_stamp"] == 4 and node.counters["rejected"] == 4, 5.0), node.counters
    assert predictions == []
    pub.publish(frame(test, 7))
    assert wait_for(lambda: len(predictions) == 1, 5.0) and predictions[0].header.frame_id == "cam7"


def test_inactive_node_publishes_nothing_and_instruction_updates(graph: RosGraph) -> None:
    node = policy(graph, autostart=False)
    test = graph.node("probe")
    assert lifecycle_state(test, "magma_policy_node") == "unconfigured"
    predictions = graph.collect(test, Prediction, contract.PREDICTION.name)
    pub = test.create_publisher(Image, contract.CAMERA_IMAGE.name, qos("reliable"))
    assert change_lifecycle_state(test, "magma_policy_node", "configure")
    assert lifecycle_state(test, "magma_policy_node") == "inactive"
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    for i in range(5):
        pub.publish(frame(test, i))
    assert wait_for(lambda: node.counters["inactive"] == 5, 5.0)
    assert predictions == []

    # Instruction by service, then by topic.
    client = test.create_client(SetInstruction, "/magma_policy_node/set_instruction")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(SetInstruction.Request(instruction="reach the blue cube"))
    assert wait_for(future.done, 5.0) and future.result().success
    empty = client.call_async(SetInstruction.Request(instruction="   "))
    assert wait_for(empty.done, 5.0) and not empty.result().success
    assert node.instruction == "reach the blue cube"
    topic = test.create_publisher(String, contract.INSTRUCTION.name, qos(contract.INSTRUCTION))
    topic.publish(String(data="pick up the green cube"))
    assert wait_for(lambda: node.instruction == "pick up the green cube", 5.0)

    assert change_lifecycle_state(test, "magma_policy_node", "activate")
    assert lifecycle_state(test, "magma_policy_node") == "active"
    pub.publish(frame(test, 7))
    assert wait_for(lambda: len(predictions) == 1, 5.0)
    assert predictions[0].instruction == "pick up the green cube"
    assert change_lifecycle_state(test, "magma_policy_node", "deactivate")
    pub.publish(frame(test, 8))
    assert wait_for(lambda: node.counters["inactive"] == 6, 5.0)
    assert len(predictions) == 1


def test_stale_frames_are_never_acted_on(graph: RosGraph) -> None:
    node = policy(graph, max_observation_age_s=0.2)
    test = graph.node("probe")
    predictions = graph.collect(test, Prediction, contract.PREDICTION.name)
    pub = test.create_publisher(Image, contract.CAMERA_IMAGE.name, qos("reliable"))
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    old = frame(test, 1)
    old.header.stamp.sec -= 5
    pub.publish(old)
    assert wait_for(lambda: node.counters["stale"] == 1, 5.0)
    assert predictions == []
