"""`magma-ros up`: a bringup description's nodes in one process, with its parameter files."""

from __future__ import annotations

import os
import signal

from magma_ros import contract
from magma_ros.msg import Prediction
from tests.ros.harness import RosGraph, wait_for


def test_up_runs_the_synthetic_bringup_and_stops_cleanly(graph: RosGraph, spawn) -> None:
    up = spawn("magma-ros", "up", "config/bringup/synthetic.yaml")
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    assert wait_for(lambda: len(predictions) >= 5, 60), up.output()
    # config/policy_none.yaml's values reached the node: no model, so no valid action.
    assert all(not p.action_valid and "backend 'none'" in p.error for p in predictions)
    assert predictions[-1].header.frame_id == "camera_color_optical_frame"   # config/synthetic_camera.yaml
    os.killpg(up.proc.pid, signal.SIGINT)
    assert up.proc.wait(15) == 0, up.output()


def test_up_rejects_a_bad_description(spawn, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - executable: no_such_node\n")
    up = spawn("magma-ros", "up", str(bad))
    assert up.proc.wait(60) == 2
    assert "unknown executable 'no_such_node'" in up.output()
