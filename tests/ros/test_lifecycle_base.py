"""The lifecycle base (magma_ros.ros.lifecycle_node.ManagedNode) on real rclpy nodes over DDS.

A failed configure leaves nothing behind (no publisher, subscription, timer, service, client
or thread, neither in the node nor on the graph); deactivate runs the safety action while the
publishers are still enabled; an error in a transition ends in on_error (safe, released,
unconfigured); autostart; transition tracebacks are logged. The real nodes fail the same way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import Trigger

from magma_ros import contract
from magma_ros.contract import NodeParameters, PolicyNodeParameters, ServoBridgeParameters
from magma_ros.ros.lifecycle_node import ManagedNode, SetupError
from magma_ros.ros.policy_node import PolicyNode
from magma_ros.ros.runtime import qos
from magma_ros.ros.servo_bridge_node import ServoBridgeNode
from tests.ros.harness import RosGraph, change_lifecycle_state, lifecycle_state, wait_for

TOPIC = "/lifecycle_probe/out"


def _field(default: Any, live: bool = False) -> Any:
    return field(default=default, metadata={"description": "test parameter", "live": live})


@dataclass
class ProbeParameters(NodeParameters):
    NODE_NAME = "lifecycle_probe_node"

    fail_at: str = _field("", live=True)       # "" | "halfway" (unexpected error) | "end" (SetupError)
    fail_safety: bool = _field(False, live=True)
    autostart: bool = _field(False)


class ProbeNode(ManagedNode[ProbeParameters]):
    PARAMETERS = ProbeParameters

    def initialize(self) -> None:
        self.events: list[str] = []
        self.worker: threading.Thread | None = None

    def setup(self) -> None:
        self.out = self.own_publisher(String, TOPIC, qos("reliable"))
        self.own_publisher(String, f"{TOPIC}_plain", qos("reliable"), lifecycle=False)
        if self.params.fail_at == "halfway":
            raise RuntimeError("boom halfway")
        self.own_subscription(String, f"{TOPIC}_in", lambda msg: None, qos("reliable"))
        self.own_timer(0.05, lambda: None)
        self.own_service(Trigger, "~/probe", lambda request, response: response)
        self.own_client(Trigger, "/lifecycle_probe_nowhere")
        self.worker = self.own_thread("probe worker", lambda stop: stop.wait())
        if self.params.fail_at == "end":
            raise SetupError("expected failure at the end")

    def activate(self) -> None:
        self.events.append("activate")

    def safety_action(self) -> None:
        self.events.append("safety")
        self.out.publish(String(data="safe"))
        if self.params.fail_safety:
            raise RuntimeError("safety action failed")

    def deactivate(self) -> None:
        self.events.append("deactivate")

    def teardown(self) -> None:
        self.events.append("teardown")


def entities(node: Any) -> dict[str, int]:
    return {kind: len(list(getattr(node, kind))) for kind in ("publishers", "subscriptions", "timers", "services",
                                                               "clients")}


def test_a_configure_that_fails_halfway_leaves_nothing_behind(graph: RosGraph, capfd: pytest.CaptureFixture) -> None:
    node: ProbeNode = graph.add(ProbeNode(context=graph.context))  # type: ignore[assignment]
    probe = graph.node("probe")
    received: list[str] = []
    probe.create_subscription(String, TOPIC, lambda msg: received.append(msg.data), qos("reliable"))
    baseline = entities(node)
    name = ProbeParameters.NODE_NAME

    for fail_at in ("halfway", "end"):
        node.set_parameters([Parameter("fail_at", value=fail_at)])
        capfd.readouterr()
        assert not change_lifecycle_state(probe, name, "configure")
        assert lifecycle_state(probe, name) == "unconfigured"
        assert len(node.resources) == 0 and entities(node) == baseline, (fail_at, entities(node), baseline)
        assert wait_for(lambda: probe.count_publishers(TOPIC) == 0 and probe.count_publishers(f"{TOPIC}_plain") == 0,
                        5.0)
        assert f"/{name}/probe" not in dict(probe.get_service_names_and_types())
        if node.worker is not None:
            assert not node.worker.is_alive()
        log = capfd.readouterr().err
        if fail_at == "halfway":  # unexpected: the traceback is logged (rclpy would swallow it)
            assert "configure failed: RuntimeError('boom halfway')" in log and "Traceback" in log, log
        else:  # expected: one line
            assert "configure failed: expected failure at the end" in log and "Traceback" not in log, log

    # The same node configures cleanly afterwards; deactivate sends the safety action while the
    # publisher is still enabled (the probe receives it), cleanup releases everything.
    node.set_parameters([Parameter("fail_at", value="")])
    assert change_lifecycle_state(probe, name, "configure")
    assert len(node.resources) == 7 and node.worker is not None and node.worker.is_alive()
    assert wait_for(lambda: probe.count_publishers(TOPIC) == 1, 5.0)
    assert change_lifecycle_state(probe, name, "activate") and node.active
    assert wait_for(lambda: node.out.get_subscription_count() > 0, 5.0)
    assert change_lifecycle_state(probe, name, "deactivate") and not node.active
    assert wait_for(lambda: received == ["safe"], 5.0), received
    assert node.events[-3:] == ["activate", "safety", "deactivate"]
    assert change_lifecycle_state(probe, name, "cleanup")
    assert len(node.resources) == 0 and entities(node) == baseline and not node.worker.is_alive()
    assert node.events[-1] == "teardown"


def test_an_error_in_a_transition_ends_safe_released_and_unconfigured(graph: RosGraph) -> None:
    node: ProbeNode = graph.add(ProbeNode(context=graph.context, parameter_overrides=[
        Parameter("autostart", value=True), Parameter("fail_safety", value=True)]))  # type: ignore[assignment]
    probe = graph.node("probe")
    name = ProbeParameters.NODE_NAME
    assert lifecycle_state(probe, name) == "active" and node.active  # autostart
    baseline_resources = len(node.resources)
    assert baseline_resources == 7
    # The safety action raises: deactivate reports ERROR, on_error releases everything -> unconfigured.
    assert not change_lifecycle_state(probe, name, "deactivate")
    assert lifecycle_state(probe, name) == "unconfigured"
    assert len(node.resources) == 0 and not node.worker.is_alive() and not node.active
    assert node.events.count("safety") == 1 and "teardown" in node.events
    node.set_parameters([Parameter("fail_safety", value=False)])
    assert change_lifecycle_state(probe, name, "configure")  # usable again


def test_autostart_with_a_failing_configure_stays_unconfigured(graph: RosGraph) -> None:
    node: ProbeNode = graph.add(ProbeNode(context=graph.context, parameter_overrides=[
        Parameter("autostart", value=True), Parameter("fail_at", value="halfway")]))  # type: ignore[assignment]
    probe = graph.node("probe")
    assert lifecycle_state(probe, ProbeParameters.NODE_NAME) == "unconfigured"
    assert len(node.resources) == 0 and not node.active


def test_the_bridge_leaves_nothing_behind_when_configure_fails_halfway(graph: RosGraph) -> None:
    # Its twist and filtered-twist publishers exist when the (invalid) gripper topic is refused by rclpy.
    bridge: ServoBridgeNode = graph.add(ServoBridgeNode(context=graph.context, parameter_overrides=[
        Parameter("gripper_topic", value="not a topic!"), Parameter("autostart", value=True)]))  # type: ignore[assignment]
    probe = graph.node("probe")
    assert lifecycle_state(probe, ServoBridgeParameters.NODE_NAME) == "unconfigured"
    assert len(bridge.resources) == 0 and bridge._twist_pub is None
    time.sleep(0.5)
    for topic in (contract.SERVO_TWIST.name, f"/{ServoBridgeParameters.NODE_NAME}/filtered_twist"):
        assert probe.count_publishers(topic) == 0, topic
    # Still answering: the e-stop reset (always on) works in the unconfigured state.
    client = probe.create_client(Trigger, f"/{ServoBridgeParameters.NODE_NAME}/reset_estop")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done, 5.0) and future.result().success


@pytest.mark.slow  # the torch backend's imports, when nothing imported them before
def test_the_policy_node_releases_everything_when_its_model_does_not_load(graph: RosGraph) -> None:
    policy: PolicyNode = graph.add(PolicyNode(context=graph.context, parameter_overrides=[
        Parameter("checkpoint", value="/nonexistent/checkpoint"), Parameter("autostart", value=True)]))  # type: ignore[assignment]
    probe = graph.node("probe")
    assert lifecycle_state(probe, PolicyNodeParameters.NODE_NAME) == "unconfigured"
    assert len(policy.resources) == 0 and policy._backend is None and not policy._threads
    assert probe.count_publishers(contract.PREDICTION.name) == 0 and probe.count_publishers(contract.EE_DELTA.name) == 0
