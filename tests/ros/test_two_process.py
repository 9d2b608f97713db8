"""A camera process at 30 Hz, magma_policy_node in another process, the test in a third."""

from __future__ import annotations

import itertools
import time

from sensor_msgs.msg import Image

from magma_ros import contract
from magma_ros.msg import Prediction
from tests.ros.harness import RosGraph, wait_for


def stamp_key(msg) -> tuple[int, int]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def test_camera_process_to_policy_process(graph: RosGraph, spawn) -> None:
    camera = spawn("synthetic_camera_node", "--ros-args", "-p", "rate_hz:=30.0", "-p", "width:=640",
                   "-p", "height:=480")
    policy = spawn("magma_policy_node", "--ros-args", "-p", "backend:=none", "-p", "autostart:=true",
                   "-p", "control_rate_hz:=0.0")
    probe = graph.node("probe")
    images = graph.collect(probe, Image, contract.CAMERA_IMAGE.name, "sensor_data")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    assert wait_for(lambda: len(predictions) >= 1, 30), policy.output() + camera.output()
    start_images, start_predictions = len(images), len(predictions)
    time.sleep(4.0)
    assert camera.alive() and policy.alive()
    n_images = len(images) - start_images
    n_predictions = len(predictions) - start_predictions
    # 30 Hz for 4 s: allow for a loaded 2-core machine, but the stream must be real.
    assert n_images >= 60, n_images
    assert n_predictions >= 30, n_predictions
    camera_stamps = {stamp_key(m) for m in images}
    stamps = [stamp_key(p) for p in predictions]
    # Newest-frame-only processing: stamps strictly increase, no frame is answered twice.
    assert all(a < b for a, b in itertools.pairwise(stamps))
    # Every prediction answers a frame the camera really sent. The probe's own best-effort
    # subscription may miss a few frames on a loaded machine, so most (not all) must match.
    window = stamps[start_predictions:-5]
    matched = sum(s in camera_stamps for s in window)
    assert matched >= 0.7 * len(window), (matched, len(window))
    assert all(p.header.frame_id == "camera_color_optical_frame" for p in predictions)
