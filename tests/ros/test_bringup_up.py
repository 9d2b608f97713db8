"""`magma-ros up`: a bringup description's nodes, one process each by default (or composed with --in-process)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from magma_ros import contract
from magma_ros.msg import Prediction
from tests.ros.harness import RosGraph, wait_for

RUNNER = "magma_ros.ros.bringup_runner"


def children(pid: int) -> dict[int, str]:
    """Direct child processes of ``pid``: their command lines (Linux /proc)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                found[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:  # it just exited
                continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("in_process", [False, True], ids=["one-process-per-node", "in-process"])
def test_up_runs_the_synthetic_bringup_and_stops_cleanly(graph: RosGraph, spawn, in_process: bool) -> None:
    up = spawn("magma-ros", "up", "config/bringup/synthetic.yaml", *(["--in-process"] if in_process else []))
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    assert wait_for(lambda: len(predictions) >= 5, 60), up.output()
    # config/policy_none.yaml's values reached the node: no model, so no valid action.
    assert all(not p.action_valid and "backend 'none'" in p.error for p in predictions)
    assert predictions[-1].header.frame_id == "camera_color_optical_frame"   # config/synthetic_camera.yaml
    nodes = {pid: cmd for pid, cmd in children(up.proc.pid).items() if RUNNER in cmd}
    if in_process:
        assert not nodes, nodes
    else:  # like ros2 launch: each node in a process of its own, with the bringup's ROS arguments
        assert sorted(cmd.split(RUNNER)[1].split()[0] for cmd in nodes.values()) == \
            ["magma_policy_node", "synthetic_camera_node"], nodes
        assert all("--params-file" in cmd and "__node:=" in cmd for cmd in nodes.values())
    os.killpg(up.proc.pid, signal.SIGINT)
    assert up.proc.wait(30) == 0, up.output()
    assert not any(alive(pid) for pid in nodes), up.output()  # every node stopped with it


def test_up_stops_everything_when_a_node_fails(spawn, tmp_path) -> None:
    """A node that cannot start (a bad parameter value) ends the bringup with 1; the other node is stopped."""
    bringup = tmp_path / "bad_value.yaml"
    bringup.write_text("nodes:\n"
                       "  - executable: synthetic_camera_node\n"
                       "    parameters: [config/synthetic_camera.yaml]\n"
                       "  - executable: magma_policy_node\n"
                       "    parameters: [config/policy_none.yaml]\n"
                       "    overrides: {autostart: true, control_rate_hz: -5.0}\n")
    up = spawn("magma-ros", "up", str(bringup))
    assert up.proc.wait(90) == 1, up.output()
    assert "magma_policy_node exited with code" in up.output() and "stopping the others" in up.output()
    assert "control_rate_hz" in up.output()


def test_up_rejects_a_bad_description(spawn, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - executable: no_such_node\n")
    up = spawn("magma-ros", "up", str(bad))
    assert up.proc.wait(60) == 2
    assert "unknown executable 'no_such_node'" in up.output()
