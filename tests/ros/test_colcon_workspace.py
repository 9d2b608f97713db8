"""The package builds the way ROS users build it: colcon, in a workspace, against a ROS prefix.

The prefix is this virtualenv (pip-installed ROS 2 Kilted + colcon). After the build,
the environment install/setup.bash gives is enough to import the messages from the
install space and to run the node executables, which answer on their topics.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from magma_ros import contract
from magma_ros.msg import Prediction
from tests.ros.harness import Process, RosGraph, wait_for

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def project_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in listed if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    ws = tmp_path_factory.mktemp("colcon_ws")
    for rel in project_files():
        target = ws / "src" / "magma_ros" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")}
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV), PATH=f"{VENV / 'bin'}:{env['PATH']}")
    build = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--event-handlers", "console_direct-",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-4000:]
    # The environment `source install/setup.bash` gives a shell.
    dump = subprocess.run(["bash", "-c", "source install/setup.bash && env -0"], cwd=ws, env=env,
                          capture_output=True, check=True).stdout.decode()
    sourced = dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)
    sourced.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return ws, sourced


def test_install_space_layout(workspace: tuple[Path, dict[str, str]]) -> None:
    ws, _ = workspace
    prefix = ws / "install" / "magma_ros"
    from magma_ros.executables import ALL, NODES

    for name in NODES:
        assert os.access(prefix / "lib" / "magma_ros" / name, os.X_OK), name
    assert os.access(prefix / "bin" / "magma-ros", os.X_OK)
    assert (prefix / "share" / "magma_ros" / "package.xml").is_file()
    assert (prefix / "share" / "magma_ros" / "config" / "bringup" / "synthetic.yaml").is_file()
    assert (prefix / "share" / "magma_ros" / "launch" / "synthetic.launch.py").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "magma_ros").is_file()
    assert set(ALL) >= set(NODES)


def test_messages_import_from_install_space(workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    code = ("import magma_ros, magma_ros.msg as m, magma_ros.srv as s; "
            "p = m.Prediction(); p.action[0] = 0.5; d = m.EndEffectorDelta(dx=0.01); "
            "s.SetInstruction.Request(instruction='x'); "
            "print(magma_ros.__file__); print(m.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ws, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    package_file, msg_file = out.stdout.split()
    assert str(ws / "install") in package_file and str(ws / "install") in msg_file


def test_installed_executables_answer_on_topics(workspace: tuple[Path, dict[str, str]], graph: RosGraph,
                                                tmp_path: Path) -> None:
    ws, env = workspace
    lib = ws / "install" / "magma_ros" / "lib" / "magma_ros"
    camera = Process([str(lib / "synthetic_camera_node"), "--ros-args", "-p", "rate_hz:=15.0",
                      "-p", "width:=160", "-p", "height:=120"], tmp_path / "camera.log", env)
    policy = Process([str(lib / "magma_policy_node"), "--ros-args", "-p", "backend:=none",
                      "-p", "autostart:=true"], tmp_path / "policy.log", env)
    try:
        probe = graph.node("probe")
        predictions = graph.collect(probe, Prediction, contract.PREDICTION.name)
        assert wait_for(lambda: len(predictions) >= 3, 60), policy.output() + camera.output()
        assert str(ws / "install") in policy.output() or policy.alive()
    finally:
        camera.stop()
        policy.stop()
