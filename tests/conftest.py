"""Test-wide setup: every ROS process stays on this machine, in its own DDS domain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports rclpy: loopback-only discovery and a domain of our own,
# so parallel test runs (and other machines) never see each other's nodes.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("MAGMA_ROS_TEST_DOMAIN_ID") or str(1 + os.getpid() % 200)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")

from magma_ros.bringup import apply_local_dds_profile

apply_local_dds_profile()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Why each rerun test failed the first time (tests/ros/conftest.py reruns the DDS tests): the
    assertion and its line, so a flake that a rerun hides still says what it was."""
    reruns = terminalreporter.stats.get("rerun", [])
    if not reruns:
        return
    terminalreporter.section("why tests were rerun")
    for report in reruns:
        crash = getattr(report.longrepr, "reprcrash", None)
        where = f"{Path(crash.path).name}:{crash.lineno}: " if crash is not None else ""
        message = (crash.message if crash is not None else str(report.longrepr)).strip().splitlines() or [""]
        terminalreporter.write_line(f"{report.nodeid}: {where}{message[0][:300]}")
