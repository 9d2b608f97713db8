"""Bringup descriptions: which nodes to start, with which parameter files.

One YAML description per scenario lives in ``config/bringup/``. Both the launch
files (``launch/*.launch.py``, for real ROS installs) and ``magma-ros up`` (one
process, no ``launch`` needed) read it, so the two cannot drift. ROS-free.

Format::

    description: what this brings up
    nodes:
      - executable: magma_policy_node        # from magma_ros/executables.py
        name: magma_policy_node              # optional node name (default: the executable's)
        parameters: [config/policy.yaml]     # ROS parameter files, relative to the package
        overrides: {autostart: true}         # optional parameter values on top
    dataset_spec: config/datasets/<robot>.yaml   # optional: the spec the model was trained with; a policy
                                                 # or bridge that disagrees with it is refused
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from magma_ros.executables import NODES


class BringupError(ValueError):
    """A bringup description or one of the files it names is wrong."""


@dataclass(frozen=True)
class NodeLaunch:
    executable: str
    name: str
    parameter_files: tuple[Path, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    def ros_args(self) -> list[str]:
        """Command-line ROS arguments giving this node its name and parameters."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for path in self.parameter_files:
            args += ["--params-file", str(path)]
        for key, value in self.overrides.items():
            # JSON is YAML: strings stay strings ("true", "", "1.0"), lists and numbers keep their type.
            args += ["-p", f"{key}:={json.dumps(value)}"]
        return args

    def parameter_values(self) -> dict[str, Any]:
        """The parameter values this node starts with: its parameter files in order, then the overrides."""
        values: dict[str, Any] = {}
        for path in self.parameter_files:
            values.update(parameter_file_values(path, self.name))
        values.update(self.overrides)
        return values


@dataclass(frozen=True)
class Bringup:
    source: Path
    description: str
    nodes: tuple[NodeLaunch, ...]

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Bringup:
        """The same bringup with extra parameter overrides per executable (they win over the node's own)."""
        return dataclasses.replace(self, nodes=tuple(
            dataclasses.replace(n, overrides={**n.overrides, **overrides.get(n.executable, {})}) for n in self.nodes))


def package_root() -> Path:
    """Where config/, launch/ and urdf/ live: the source tree, else the ament share dir."""
    source = Path(__file__).resolve().parent.parent
    if (source / "config" / "bringup").is_dir():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError as err:
        raise BringupError("magma_ros data files not found (no source tree, no ament index)") from err
    return Path(get_package_share_directory("magma_ros"))


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """A package-relative path (config/...) or an absolute one, checked to exist."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = (root or package_root()) / candidate
    if not candidate.is_file():
        raise BringupError(f"file not found: {candidate}")
    return candidate


def load_bringup(path: str | Path) -> Bringup:
    """Read and validate a bringup description (every executable and file must exist)."""
    source = resolve(path) if not Path(path).is_file() else Path(path).resolve()
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise BringupError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise BringupError(f"{source}: needs a non-empty 'nodes' list")
    root = package_root()
    nodes = []
    for i, entry in enumerate(data["nodes"]):
        where = f"{source}: nodes[{i}]"
        if not isinstance(entry, dict) or "executable" not in entry:
            raise BringupError(f"{where}: needs an 'executable'")
        unknown = set(entry) - {"executable", "name", "parameters", "overrides"}
        if unknown:
            raise BringupError(f"{where}: unknown key(s) {sorted(unknown)}")
        executable = entry["executable"]
        if executable not in NODES:
            raise BringupError(f"{where}: unknown executable {executable!r}; known: {sorted(NODES)}")
        files = tuple(resolve(p, root) for p in entry.get("parameters", []) or [])
        overrides = entry.get("overrides", {}) or {}
        if not isinstance(overrides, dict):
            raise BringupError(f"{where}: 'overrides' must be a mapping")
        nodes.append(NodeLaunch(executable, str(entry.get("name", executable)), files, dict(overrides)))
    if data.get("dataset_spec"):
        check_dataset_spec(resolve(data["dataset_spec"], root), nodes, str(source))
    return Bringup(source, str(data.get("description", "")), tuple(nodes))


SIM_BRINGUP = "config/bringup/sim.yaml"
"""The simulated workcell's bringup (`magma-ros demo` and `evaluate` run it)."""


def node_parameters(bringup: Bringup | str | Path, executable: str, kind: type) -> Any:
    """The parameter dataclass ``kind`` (e.g. ``contract.SimArmParameters``) holding the values a
    bringup gives one of its nodes (its files, then its overrides) over the dataclass's defaults:
    what that node runs with. ROS-free tools (``closed_loop_trace.py``, ``tom_sim_truth.py``, the
    closed-loop bench) use it to see the frames the sim node publishes."""
    if not isinstance(bringup, Bringup):
        bringup = load_bringup(bringup)
    node = next((n for n in bringup.nodes if n.executable == executable), None)
    if node is None:
        raise BringupError(f"{bringup.source}: no {executable} node")
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in node.parameter_values().items() if k in names})


def check_dataset_spec(spec_file: Path, nodes: list[NodeLaunch], where: str) -> None:
    """Refuse a bringup whose policy node or Servo bridge disagrees with the dataset spec it names
    (``dataset_spec:``): statistics name, step period, frames, camera, gripper (training.spec.check_serving)."""
    from magma_ros import contract
    from magma_ros.training.spec import SpecError, check_serving, load_spec

    try:
        spec = load_spec(spec_file)
        found: dict[str, contract.NodeParameters] = {}
        for node in nodes:
            cls = contract.PARAMETER_CLASSES.get(node.executable)
            if cls is None or node.executable not in ("magma_policy_node", "servo_bridge_node"):
                continue
            found[node.executable] = cls.from_mapping(node.parameter_values(), f"{where}: {node.name}")
        check_serving(spec, found.get("magma_policy_node"), found.get("servo_bridge_node"),  # type: ignore[arg-type]
                      where=where)
    except (SpecError, contract.ContractError) as err:
        raise BringupError(str(err)) from err


def parameter_file_values(path: Path, node_name: str) -> dict[str, Any]:
    """The parameters a ROS parameter file gives ``node_name`` (``/**`` and exact-name sections)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise BringupError(f"{path}: a parameter file must be a mapping of node names")
    values: dict[str, Any] = {}
    for key, section in data.items():
        names = {key, key.lstrip("/")}
        if key in ("/**", "**") or node_name in names:
            if not isinstance(section, dict) or "ros__parameters" not in section:
                raise BringupError(f"{path}: section {key!r} needs 'ros__parameters'")
            values.update(section["ros__parameters"] or {})
    return values


def apply_local_dds_profile(env: MutableMapping[str, str] = os.environ) -> None:
    """Point Fast DDS at config/fastdds_local.xml unless a profile is already configured.

    Large camera frames need bigger shared-memory segments than Fast DDS's default
    (see that file). Must run before rclpy.init() to take effect.
    """
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return
    if env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        return
    with contextlib.suppress(BringupError):   # no data files: Fast DDS's defaults
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(resolve("config/fastdds_local.xml"))
