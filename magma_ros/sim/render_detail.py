"""How detailed the arm looks to the cameras: the published meshes, or its collision meshes (cheaper to render).

pybullet's CPU TinyRenderer spends most of a 320x240 frame on the Panda's visual meshes
(~9 MB of OBJ, high-poly). ``low`` draws the arm with its collision meshes instead: the
same links, poses and colours, a coarser surface, about half the render cost of a frame
(measured in bench/closed_loop_bench.py's notes and the realtime diagnostics). Physics
and collision are unchanged either way (pybullet collides with the collision meshes).

Images differ between the two, so record, train and evaluate with the same setting.
ROS-free.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from magma_ros.sim.errors import ConfigError

RENDER_DETAILS = ("full", "low")


def arm_urdf_for(detail: str, arm_urdf: str = "franka_panda/panda.urdf") -> str:
    """The ``WorkcellConfig.arm_urdf`` to use for ``detail`` ('full': ``arm_urdf`` itself)."""
    if detail not in RENDER_DETAILS:
        raise ConfigError(f"render detail must be one of {', '.join(RENDER_DETAILS)}, got {detail!r}")
    if detail == "full":
        return arm_urdf
    return str(low_detail_urdf(arm_urdf))


def low_detail_urdf(arm_urdf: str = "franka_panda/panda.urdf", cache_dir: Path | None = None) -> Path:
    """A copy of the arm URDF whose visuals are its collision meshes (absolute mesh paths), cached by content."""
    import pybullet_data

    source = Path(arm_urdf)
    if not source.is_absolute():
        source = Path(pybullet_data.getDataPath()) / source
    try:
        text = source.read_text(encoding="utf-8")
        root = ET.fromstring(text)
    except (OSError, ET.ParseError) as err:
        raise ConfigError(f"cannot read arm URDF {source}: {err}") from err

    def absolute(filename: str) -> str:
        relative = filename[len("package://"):] if filename.startswith("package://") else filename
        path = Path(relative)
        return str(path if path.is_absolute() else (source.parent / path).resolve())

    for link in root.iter("link"):
        collision = link.find("collision/geometry/mesh")
        for visual in link.findall("visual/geometry/mesh"):
            visual.set("filename", absolute(collision.get("filename", "")) if collision is not None
                       else absolute(visual.get("filename", "")))
        for mesh in link.findall("collision/geometry/mesh"):
            mesh.set("filename", absolute(mesh.get("filename", "")))
    out_text = ET.tostring(root, encoding="unicode")
    digest = hashlib.sha256(out_text.encode()).hexdigest()[:16]
    folder = cache_dir or Path(tempfile.gettempdir()) / f"magma_ros_{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{source.stem}_low_{digest}.urdf"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(out_text, encoding="utf-8")
        partial.replace(target)  # atomic: concurrent nodes never read half a file
    return target
