"""The embedded default checkpoint: what runs when no checkpoint is configured.

Resolution order:
1. ``$MAGMA_ROS_DEFAULT_CHECKPOINT`` when set (any checkpoint directory);
2. a trained magma-tiny shipped with the package: ``checkpoints/magma-tiny`` next to
   ``config/``, as written by the ``ship`` stage of ``training/recipes/default_model.sh``
   (weights, model card README.md and ``evaluation.json``, the closed-loop success on held-out
   seeds that ``magma-ros demo`` quotes). None ships yet: the recipe's first model did not
   succeed in closed loop (training/recipes/README.md). Shipping one also needs setup.py and
   CMakeLists.txt to install ``checkpoints/`` and config/policy_sim.yaml to decode with its
   statistics (``sim_panda``);
3. otherwise: an untrained magma-tiny built deterministically (seed 0) into the user cache
   the first time it is needed. It exercises the whole stack but is not a useful policy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

SHIPPED_NAME = "magma-tiny"
SHIPPED_EVALUATION = "evaluation.json"
"""Beside the shipped weights: the closed-loop success measured by the recipe (summary of
``magma-ros evaluate`` on held-out seeds), what the demo quotes."""
UNTRAINED_VARIANT = "magma-tiny"
UNTRAINED_SEED = 0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "magma_ros" / "checkpoints"


def shipped_checkpoint() -> Path | None:
    from magma_ros.bringup import BringupError, package_root

    try:
        candidate = package_root() / "checkpoints" / SHIPPED_NAME
    except BringupError:
        return None
    return candidate if (candidate / "config.json").is_file() else None


def shipped_evaluation(directory: Path | None = None) -> dict | None:
    """The shipped default's measured closed-loop success (``evaluation.json``), None if absent/unreadable."""
    directory = directory if directory is not None else shipped_checkpoint()
    if directory is None:
        return None
    try:
        data = json.loads((directory / SHIPPED_EVALUATION).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def untrained_checkpoint() -> Path:
    """Build (once) and return the untrained magma-tiny checkpoint directory."""
    target = cache_dir() / f"{UNTRAINED_VARIANT}-untrained-seed{UNTRAINED_SEED}"
    if (target / "config.json").is_file():
        return target
    from magma_ros.model import build_tiny_model, save_checkpoint

    target.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_model(UNTRAINED_VARIANT, seed=UNTRAINED_SEED)
    # Write next to the target and rename, so concurrent first uses never see half a checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    save_checkpoint(model, tokenizer, staging)
    try:
        staging.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_checkpoint() -> tuple[Path, str]:
    """(directory, short description) of the checkpoint used when none is configured."""
    override = os.environ.get("MAGMA_ROS_DEFAULT_CHECKPOINT")
    if override:
        return Path(override), f"MAGMA_ROS_DEFAULT_CHECKPOINT={override}"
    shipped = shipped_checkpoint()
    if shipped is not None:
        return shipped, f"shipped {SHIPPED_NAME} ({shipped})"
    return untrained_checkpoint(), f"untrained {UNTRAINED_VARIANT} (seed {UNTRAINED_SEED})"
