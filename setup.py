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


def share(folder: str) -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{folder}", sorted(p for p in glob(f"{folder}/**/*", recursive=True) if Path(p).is_file() and not p.endswith(".keep")))


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
        share("launch"),
        share("config"),
        share("urdf"),
    ],
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in EXECUTABLES.items()]},
    zip_safe=False,
)
