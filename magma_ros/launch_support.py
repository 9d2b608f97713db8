"""Turn a bringup description into a launch description (used by launch/*.launch.py).

Needs ``launch`` and ``launch_ros`` (a real ROS install); imported only by the
launch files. The same description runs without them through ``magma-ros up``.
"""

from __future__ import annotations

from typing import Any


def bringup_launch_description(default_bringup: str) -> Any:
    """A LaunchDescription starting the nodes of ``bringup:=...`` (default ``default_bringup``)."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    from launch import LaunchDescription

    def nodes(context: Any) -> list[Any]:
        from launch_ros.actions import Node

        from magma_ros.bringup import load_bringup

        bringup = load_bringup(LaunchConfiguration("bringup").perform(context))
        return [
            Node(package="magma_ros", executable=n.executable, name=n.name, output="screen",
                 parameters=[*(str(p) for p in n.parameter_files), n.overrides])
            for n in bringup.nodes
        ]

    return LaunchDescription([
        DeclareLaunchArgument("bringup", default_value=default_bringup,
                              description="bringup description (config/bringup/*.yaml or a path)"),
        OpaqueFunction(function=nodes),
    ])
