"""Every executable magma_ros installs: name -> ``module:function``.

The one list read by ``setup.py`` (console_scripts), by ``CMakeLists.txt`` (wrapper
scripts under ``lib/magma_ros`` for ``ros2 run`` and launch files) and by the test
that checks launch files only name executables that exist. Plain data: importing
this module must stay free of side effects and heavy imports.
"""

NODES: dict[str, str] = {
    "magma_policy_node": "magma_ros.ros.policy_node:main",
    "servo_bridge_node": "magma_ros.ros.servo_bridge_node:main",
    "sim_arm_node": "magma_ros.ros.sim_arm_node:main",
    "synthetic_camera_node": "magma_ros.ros.synthetic_camera_node:main",
}

TOOLS: dict[str, str] = {
    "magma-ros": "magma_ros.cli:main",
}

ALL: dict[str, str] = {**NODES, **TOOLS}
