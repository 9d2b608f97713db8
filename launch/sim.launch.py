"""Simulated workcell + policy + Servo bridge: ros2 launch magma_ros sim.launch.py

Reads config/bringup/sim.yaml, the same description `magma-ros up` and `magma-ros demo` run.
"""

from magma_ros.launch_support import bringup_launch_description


def generate_launch_description():
    return bringup_launch_description("config/bringup/sim.yaml")
