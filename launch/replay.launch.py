"""Replay a recording through the same stack, for offline tuning.

    ros2 launch magma_ros replay.launch.py bag:=/path/to/bag [rate:=1.0]

Starts policy + bridge (dry run) on sim time from config/bringup/replay.yaml and plays
the bag with `magma-ros replay` (publishing /clock), as `magma-ros up` + `magma-ros replay` do.
"""

from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from magma_ros.launch_support import bringup_launch_description


def generate_launch_description():
    stack = bringup_launch_description("config/bringup/replay.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory or file (mcap / sqlite3)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate (0 = as fast as possible)"),
        stack,   # a LaunchDescription nests as an entity
        ExecuteProcess(cmd=["magma-ros", "replay", LaunchConfiguration("bag"), "--rate", LaunchConfiguration("rate"),
                            "--wait-for-subscribers", "10"], output="screen"),
    ])
