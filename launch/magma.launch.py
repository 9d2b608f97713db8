"""Policy + safety bridge (+ RViz) next to MoveIt Servo and a camera driver.

    ros2 launch magma_ros magma.launch.py                                  # WidowX profile
    ros2 launch magma_ros magma.launch.py bringup:=config/bringup/google_robot.yaml rviz:=true

Reads a bringup description from config/bringup/ (the same one `magma-ros up` runs).
Both nodes come up unconfigured: activate them with `ros2 lifecycle set` when the arm is ready.
Other profiles: config/bringup/google_robot.yaml, config/bringup/sim.yaml.
"""

from magma_ros.launch_support import bringup_launch_description


def generate_launch_description():
    return bringup_launch_description("config/bringup/widowx.yaml", rviz=False)
