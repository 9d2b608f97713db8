"""Test-wide setup: every ROS process stays on this machine, in its own DDS domain."""

from __future__ import annotations

import os

# Before anything imports rclpy: loopback-only discovery and a domain of our own,
# so parallel test runs (and other machines) never see each other's nodes.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_TEST_DOMAIN_ID") or str(1 + os.getpid() % 200)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")

from magma_ros.bringup import apply_local_dds_profile

apply_local_dds_profile()
