"""Structure rules: a ROS-free core, launch files that only name what exists, valid parameter files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from magma_ros import contract
from magma_ros.bringup import BringupError, load_bringup, parameter_file_values
from magma_ros.executables import ALL, NODES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "magma_ros"
# The thin ROS layer; everything else in magma_ros is the ROS-free core.
ROS_LAYER = {PACKAGE / "ros", PACKAGE / "launch_support.py", PACKAGE / "cli"}
ROS_MODULE_PREFIXES = ("rclpy", "rosidl", "launch", "launch_ros", "ament_index_python", "magma_ros.msg",
                       "magma_ros.srv", "magma_ros.ros", "rosgraph_msgs", "builtin_interfaces", "tf2_ros")


def core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not any(p == layer or layer in p.parents for layer in ROS_LAYER))


def module_level_imports(path: Path) -> list[str]:
    """Imports executed when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.append(node.module)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []) or []:
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
    visit(tree.body)
    return names


def is_ros_module(name: str) -> bool:
    return name.startswith(ROS_MODULE_PREFIXES) or name.split(".")[0].endswith(("_msgs", "_srvs", "_interfaces"))


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_core_module_imports_no_ros(path: Path) -> None:
    offending = [name for name in module_level_imports(path) if is_ros_module(name)]
    assert not offending, f"{path.relative_to(REPO)} imports ROS at module level: {offending}"


def test_core_imports_without_loading_rclpy() -> None:
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in core_modules()]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('rclpy', 'magma_ros.msg', 'magma_ros.ros')))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def launch_files() -> list[Path]:
    return sorted((REPO / "launch").glob("*.launch.py"))


def test_there_are_launch_files() -> None:
    assert launch_files()


@pytest.mark.parametrize("path", launch_files(), ids=lambda p: p.name)
def test_launch_file_names_only_installed_executables_and_existing_files(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        for kw in call.keywords:
            if kw.arg == "executable" and isinstance(kw.value, ast.Constant):
                assert kw.value.value in ALL, f"{path.name}: unknown executable {kw.value.value!r}"
            if kw.arg == "package" and isinstance(kw.value, ast.Constant):
                assert kw.value.value == "magma_ros", f"{path.name}: starts a node of {kw.value.value}"
    referenced = [s for s in strings if s.endswith((".yaml", ".rviz", ".urdf", ".xml"))]
    assert referenced, f"{path.name} names no bringup description or file"
    for ref in referenced:
        assert (REPO / ref).is_file(), f"{path.name}: {ref} does not exist"
        if ref.startswith("config/bringup/"):
            bringup = load_bringup(REPO / ref)  # validates executables and parameter files
            assert all(n.executable in NODES for n in bringup.nodes)


def bringups() -> list[Path]:
    return sorted((REPO / "config" / "bringup").glob("*.yaml"))


@pytest.mark.parametrize("path", bringups(), ids=lambda p: p.name)
def test_bringup_parameter_files_fit_the_contract(path: Path) -> None:
    bringup = load_bringup(path)
    for node in bringup.nodes:
        node_name = node.executable if node.executable in contract.PARAMETER_CLASSES else None
        params_cls = contract.PARAMETER_CLASSES.get(node_name or "")
        if params_cls is None:
            continue
        values: dict = {}
        for file in node.parameter_files:
            values.update(parameter_file_values(file, node.name))
        values.update(node.overrides)
        params_cls.from_mapping(values, source=str(path))  # raises on unknown names or bad values


def test_bringup_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"nodes": [{"executable": "no_such_node"}]}))
    with pytest.raises(BringupError, match=r"unknown executable 'no_such_node'"):
        load_bringup(bad)
    bad.write_text(yaml.safe_dump({"nodes": [{"executable": "magma_policy_node", "parameters": ["config/nope.yaml"]}]}))
    with pytest.raises(BringupError, match=r"nope\.yaml"):
        load_bringup(bad)
    bad.write_text("nodes: [unclosed")
    with pytest.raises(BringupError, match="not valid YAML"):
        load_bringup(bad)


def parameter_files() -> list[Path]:
    return sorted([*(REPO / "config").glob("*.yaml"), *(REPO / "config" / "robots").glob("*.yaml")])


@pytest.mark.parametrize("path", parameter_files(), ids=lambda p: p.name)
def test_every_parameter_file_fits_its_nodes(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    for name, section in data.items():
        keys = set(section["ros__parameters"]) - {"use_sim_time"}
        node = name.strip("/")
        if node in contract.PARAMETER_CLASSES:   # a section for one node: its contract, values checked
            contract.PARAMETER_CLASSES[node].from_mapping(dict(section["ros__parameters"]), source=str(path))
        else:
            fits = [cls for cls in contract.PARAMETER_CLASSES.values() if keys <= set(cls.descriptions())]
            assert fits, f"{path.name}: parameters {sorted(keys)} fit no node's contract"


def test_setup_py_installs_every_executable() -> None:
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "magma_ros"
    for name in ALL:
        assert (Path(sys.executable).parent / name).exists(), f"{name} not installed into the venv"


def test_topics_are_unique_and_typed() -> None:
    names = [t.name for t in contract.TOPICS.values()]
    assert len(names) == len(set(names))
    for topic in contract.TOPICS.values():
        package, kind, _ = topic.type.split("/")
        assert kind == "msg" and package



def test_rviz_config_exists_and_shows_our_topics() -> None:
    from magma_ros.launch_support import RVIZ_CONFIG

    text = (REPO / RVIZ_CONFIG).read_text()
    for topic in (contract.TRACE_MARKERS, contract.ANNOTATED_IMAGE, contract.EE_POSE):
        assert topic.name in text
