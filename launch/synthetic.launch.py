"""magma_policy_node on a synthetic camera stream: ros2 launch magma_ros synthetic.launch.py

Reads config/bringup/synthetic.yaml, the same description `magma-ros up` runs.
"""

from magma_ros.launch_support import bringup_launch_description


def generate_launch_description():
    return bringup_launch_description("config/bringup/synthetic.yaml")
