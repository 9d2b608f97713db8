"""The workcell URDF (``urdf/workcell.urdf``): frames, table geometry, and the merge with the arm.

The file is the one source of truth for where the table and the cameras are; the sim reads
it here and RViz reads it (merged with the Panda URDF) through robot_state_publisher. Only
fixed joints are supported: the workcell itself has no moving parts.

Links the file references but does not declare (``panda_link0``, ``panda_hand``) are
*external*: they belong to the arm. :meth:`WorkcellDescription.resolve` reduces any frame to
a pose relative to either the root (``world``) or such an external link.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magma_ros.sim.errors import DescriptionError
from magma_ros.sim.transforms import Pose

PACKAGE = "magma_ros"
DESCRIPTION_FILE = "workcell.urdf"


def default_description_path() -> Path:
    """Find ``workcell.urdf``: the source tree first, then installed ``share/magma_ros/urdf``.

    Installed locations searched: every prefix on ``AMENT_PREFIX_PATH`` (a colcon or ROS
    install) and the interpreter's prefix (``pip install``).
    """
    candidates = [Path(__file__).resolve().parents[2] / "urdf" / DESCRIPTION_FILE]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    candidates += [Path(prefix) / "share" / PACKAGE / "urdf" / DESCRIPTION_FILE for prefix in prefixes]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise DescriptionError(f"{DESCRIPTION_FILE} not found; searched {searched}")


@dataclass(frozen=True)
class FixedJoint:
    """A fixed joint: ``child``'s pose in ``parent`` is ``origin``."""

    name: str
    parent: str
    child: str
    origin: Pose


@dataclass(frozen=True)
class BoxVisual:
    """A link's box geometry (full edge lengths, metres) and colour (RGBA in [0, 1])."""

    size: tuple[float, float, float]
    rgba: tuple[float, float, float, float]


def _floats(text: str | None, count: int, what: str, default: str) -> tuple[float, ...]:
    raw = (text if text is not None else default).split()
    try:
        values = tuple(float(v) for v in raw)
    except ValueError as err:
        raise DescriptionError(f"{what}: expected {count} numbers, got {text!r}") from err
    if len(values) != count or not all(np.isfinite(values)):
        raise DescriptionError(f"{what}: expected {count} finite numbers, got {text!r}")
    return values


class WorkcellDescription:
    """A parsed workcell URDF: fixed joints, declared links and box geometry.

    Build with :meth:`load` (a path) or :meth:`parse` (URDF text).
    """

    def __init__(self, text: str, source: str = "<string>") -> None:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as err:
            raise DescriptionError(f"{source}: not well-formed XML: {err}") from err
        if root.tag != "robot":
            raise DescriptionError(f"{source}: root element is <{root.tag}>, expected <robot>")
        self.source = source
        self.text = text
        self.name = root.get("name", "")
        materials = {m.get("name"): m for m in root.findall("material")}
        self.links: tuple[str, ...] = tuple(link.get("name", "") for link in root.findall("link"))
        if len(set(self.links)) != len(self.links) or "" in self.links:
            raise DescriptionError(f"{source}: links must have unique, non-empty names")
        self.joints: dict[str, FixedJoint] = {}
        for joint in root.findall("joint"):
            parsed = self._parse_joint(joint)
            if parsed.child in self.joints:
                raise DescriptionError(f"{source}: link {parsed.child!r} is the child of two joints")
            self.joints[parsed.child] = parsed
        self.boxes: dict[str, BoxVisual] = {}
        for link in root.findall("link"):
            box = self._parse_box(link, materials)
            if box is not None:
                self.boxes[link.get("name", "")] = box
        for child in self.joints:
            self._chain(child)  # rejects cycles early

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> WorkcellDescription:
        """Read a workcell URDF from ``path`` (default: :func:`default_description_path`)."""
        resolved = Path(path) if path is not None else default_description_path()
        try:
            text = resolved.read_text(encoding="utf-8")
        except OSError as err:
            raise DescriptionError(f"cannot read workcell description {resolved}: {err}") from err
        return cls(text, str(resolved))

    @classmethod
    def parse(cls, text: str) -> WorkcellDescription:
        return cls(text)

    def _parse_joint(self, joint: ET.Element) -> FixedJoint:
        name = joint.get("name", "")
        if joint.get("type") != "fixed":
            raise DescriptionError(f"{self.source}: joint {name!r} is {joint.get('type')!r}; only fixed joints")
        parent, child = joint.find("parent"), joint.find("child")
        if parent is None or child is None or not parent.get("link") or not child.get("link"):
            raise DescriptionError(f"{self.source}: joint {name!r} needs <parent link> and <child link>")
        origin = joint.find("origin")
        xyz = _floats(origin.get("xyz") if origin is not None else None, 3, f"joint {name} xyz", "0 0 0")
        rpy = _floats(origin.get("rpy") if origin is not None else None, 3, f"joint {name} rpy", "0 0 0")
        return FixedJoint(name, parent.get("link", ""), child.get("link", ""), Pose.from_xyz_rpy(xyz, rpy))

    def _parse_box(self, link: ET.Element, materials: dict[str | None, ET.Element]) -> BoxVisual | None:
        visual = link.find("visual")
        box = visual.find("geometry/box") if visual is not None else None
        if visual is None or box is None:
            return None
        name = link.get("name", "")
        size = _floats(box.get("size"), 3, f"link {name} box size", "")
        if min(size) <= 0:
            raise DescriptionError(f"{self.source}: link {name!r} box size must be positive, got {size}")
        rgba: tuple[float, ...] = (0.7, 0.7, 0.7, 1.0)
        material = visual.find("material")
        if material is not None:
            color = material.find("color")
            if color is None:
                named = materials.get(material.get("name"))
                color = named.find("color") if named is not None else None
            if color is not None:
                rgba = _floats(color.get("rgba"), 4, f"link {name} colour", "")
        return BoxVisual(size, rgba)  # type: ignore[arg-type]

    def _chain(self, frame: str) -> list[FixedJoint]:
        chain: list[FixedJoint] = []
        seen = {frame}
        while frame in self.joints:
            joint = self.joints[frame]
            chain.append(joint)
            frame = joint.parent
            if frame in seen:
                raise DescriptionError(f"{self.source}: joints form a cycle through {frame!r}")
            seen.add(frame)
        return chain

    @property
    def frames(self) -> tuple[str, ...]:
        """Every frame named in the file: declared links and external links alike."""
        names = dict.fromkeys(self.links)
        for joint in self.joints.values():
            names.setdefault(joint.parent)
            names.setdefault(joint.child)
        return tuple(names)

    @property
    def external_links(self) -> tuple[str, ...]:
        """Links that joints reference but the file does not declare (they belong to the arm)."""
        return tuple(frame for frame in self.frames if frame not in self.links)

    def resolve(self, frame: str) -> tuple[str, Pose]:
        """``(anchor, pose)``: the pose of ``frame`` in its anchor.

        The anchor is the first frame up the tree without a parent joint in this file: the
        root (``world``) or an external arm link such as ``panda_hand``.
        """
        if frame not in self.frames:
            raise DescriptionError(f"{self.source}: no frame {frame!r}; known frames: {', '.join(self.frames)}")
        pose = Pose.identity()
        anchor = frame
        for joint in self._chain(frame):
            pose = joint.origin.compose(pose)
            anchor = joint.parent
        return anchor, pose

    def merged_with(self, arm_urdf: str | os.PathLike[str]) -> str:
        """One URDF holding this workcell and the arm, for robot_state_publisher and RViz.

        The arm's ``package://`` mesh paths become absolute ``file://`` paths (they are
        relative to the arm URDF's folder, as pybullet resolves them). Raises
        :class:`DescriptionError` if the result is not a single tree.
        """
        arm_path = Path(arm_urdf)
        try:
            arm_root = ET.fromstring(arm_path.read_text(encoding="utf-8"))
        except (OSError, ET.ParseError) as err:
            raise DescriptionError(f"cannot read arm URDF {arm_path}: {err}") from err
        merged = ET.fromstring(self.text)
        for element in arm_root:
            if element.tag not in ("link", "joint", "material"):
                continue
            for mesh in element.iter("mesh"):
                filename = mesh.get("filename", "")
                if filename.startswith("package://"):
                    relative = filename[len("package://") :]
                    mesh.set("filename", (arm_path.parent / relative).resolve().as_uri())
            merged.append(element)
        declared = {link.get("name") for link in merged.findall("link")}
        children = {j.find("child").get("link") for j in merged.findall("joint")}  # type: ignore[union-attr]
        parents = {j.find("parent").get("link") for j in merged.findall("joint")}  # type: ignore[union-attr]
        missing = sorted(name for name in (children | parents) - declared if name)
        roots = sorted(name for name in declared - children if name)
        if missing or len(roots) != 1:
            raise DescriptionError(f"merged description is not one tree: undeclared {missing}, roots {roots}")
        return ET.tostring(merged, encoding="unicode")
