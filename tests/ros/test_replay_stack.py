"""A recorded episode replayed through the real stack: bag -> magma-ros replay -> policy -> bridge.

The nodes come from config/bringup/replay.yaml (the offline-tuning bringup) on sim time,
so they follow the bag's /clock exactly as they would follow a robot.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import TwistStamped

from magma_ros import contract
from magma_ros.bags import typestore_for, write_bag
from magma_ros.bringup import load_bringup
from magma_ros.msg import EndEffectorDelta, Prediction
from magma_ros.ros.bringup_runner import node_class
from tests.ros.harness import RosGraph, wait_for

T0 = 1_750_000_000 * 10**9
FRAMES, FRAME_HZ = 24, 4.0
BASE = "wx250s/base_link"


def episode_records() -> list[tuple[str, str, int, Any]]:
    t = typestore_for("kilted").types

    def header(stamp: int, frame: str) -> Any:
        sec, nsec = divmod(stamp, 10**9)
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame)

    rng = np.random.default_rng(0)
    records = [(contract.INSTRUCTION.name, contract.INSTRUCTION.type, T0,
                t["std_msgs/msg/String"](data="pick up the red cube"))]
    for i in range(FRAMES):
        stamp = T0 + int((i + 1) / FRAME_HZ * 1e9)
        pixels = rng.integers(0, 256, 120 * 160 * 3, dtype=np.uint8)
        records.append((contract.CAMERA_IMAGE.name, contract.CAMERA_IMAGE.type, stamp, t["sensor_msgs/msg/Image"](
            header=header(stamp, "camera_color_optical_frame"), height=120, width=160, encoding="rgb8",
            is_bigendian=0, step=480, data=pixels)))
        for k in range(5):   # the arm's pose at 20 Hz, inside the WidowX workspace box
            pose_stamp = stamp + k * 50_000_000
            pose = t["geometry_msgs/msg/PoseStamped"](
                header=header(pose_stamp, BASE),
                pose=t["geometry_msgs/msg/Pose"](
                    position=t["geometry_msgs/msg/Point"](x=0.3, y=0.0, z=0.2),
                    orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
            records.append((contract.EE_POSE.name, contract.EE_POSE.type, pose_stamp, pose))
    return sorted(records, key=lambda r: r[2])


def test_replay_through_policy_and_bridge(graph: RosGraph, spawn, tmp_path: Path, tiny_checkpoint: Path) -> None:
    bag = write_bag(tmp_path / "episode", episode_records())
    bringup = load_bringup("config/bringup/replay.yaml")
    nodes = {}
    for launch in bringup.nodes:
        policy = launch.executable == "magma_policy_node"
        # The bridge sends the real command stream here, not only ~/filtered_twist (dry run).
        extra = {"checkpoint": str(tiny_checkpoint), "control_rate_hz": 0.0} if policy else {"dry_run": False}
        launch = dataclasses.replace(launch, overrides={**launch.overrides, **extra})
        nodes[launch.executable] = graph.add(node_class(launch.executable)(cli_args=launch.ros_args(),
                                                                           context=graph.context))
    probe = graph.node("probe")
    predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
    deltas = graph.collect(probe, EndEffectorDelta, contract.EE_DELTA.name)
    twists = graph.collect(probe, TwistStamped, contract.SERVO_TWIST.name)

    player = spawn("magma-ros", "replay", str(bag), "--rate", "1.0", "--wait-for-subscribers", "20")
    assert wait_for(lambda: player.proc.poll() is not None, 60), player.output()
    assert player.proc.returncode == 0, player.output()
    time.sleep(1.5)   # the last frame's inference and stream

    frame_stamps = {T0 + int((i + 1) / FRAME_HZ * 1e9) for i in range(FRAMES)}
    policy = nodes["magma_policy_node"]
    stamps = [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in predictions]
    # One Prediction per processed frame, each answering a recorded frame, in recorded order. On a
    # loaded machine the newest-frame rule may skip frames (counted); every frame is accounted for.
    c = policy.counters
    assert len(stamps) == c["processed"] >= 3, c
    assert c["received"] == c["processed"] + c["dropped_newer_frame"] + c["stale"] + c["rejected"], c
    assert set(stamps) <= frame_stamps and stamps == sorted(stamps)
    assert policy.counters["stale"] == 0   # sim time from /clock: recorded frames are fresh
    # ... and a command stream to Servo in the robot's base frame, driven by those steps.
    assert deltas and all(d.header.frame_id == BASE for d in deltas)
    moving = [t for t in twists if any(abs(v) > 0 for v in (t.twist.linear.x, t.twist.linear.y, t.twist.linear.z,
                                                            t.twist.angular.x, t.twist.angular.y, t.twist.angular.z))]
    assert moving and all(t.header.frame_id == BASE for t in twists)
    assert all(abs(t.twist.linear.x) <= 0.25 + 1e-9 for t in twists)   # the WidowX profile's speed cap
