"""Python packaging for magma_ros.

Two ways in: `pip install -e .` (the development virtualenv; `make setup` does it)
and colcon, which builds this package with CMakeLists.txt (ament_cmake) because
the interfaces need CMake. Both take the executables from magma_ros/executables.py.
"""

import runpy
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "magma_ros"
ROOT = Path(__file__).resolve().parent
EXECUTABLES = runpy.run_path(str(ROOT / PACKAGE / "executables.py"))["ALL"]


def share(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing ``folder`` (recursively, keeping sub-folders) under share/magma_ros."""
    files = sorted(p for p in glob(f"{folder}/**/*", recursive=True) if Path(p).is_file())
    by_dir: dict[str, list[str]] = {}
    for path in files:
        by_dir.setdefault(str(Path(path).parent), []).append(path)
    return [(f"share/{PACKAGE}/{directory}", paths) for directory, paths in sorted(by_dir.items())]


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Magma vision-language-action policy for ROS 2 (traces, 7-DoF deltas, MoveIt Servo bridge)",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share("launch"),
        *share("config"),
        *share("urdf"),
        *share("checkpoints"),   # the trained embedded default (training/recipes/default_model.sh ship)
    ],
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in EXECUTABLES.items()]},
    zip_safe=False,
)
