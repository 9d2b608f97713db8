"""Seeded cube layouts: where the cubes start, drawn without overlap inside the region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magma_ros.sim.config import SceneConfig
from magma_ros.sim.errors import SceneError

MAX_ATTEMPTS = 10_000


@dataclass(frozen=True)
class CubePlacement:
    """A cube's starting centre (x, y in the base frame, metres) and yaw (radians)."""

    color: str
    x: float
    y: float
    yaw: float


def sample_layout(config: SceneConfig, seed: int) -> tuple[CubePlacement, ...]:
    """One placement per colour in ``config.colors``, a pure function of ``(config, seed)``.

    Centres are uniform in the region and at least ``min_separation`` apart (rejection
    sampling); raises :class:`SceneError` if the region is too small to fit them.
    """
    rng = np.random.default_rng(seed)
    low, high = np.asarray(config.region_min), np.asarray(config.region_max)
    for _ in range(MAX_ATTEMPTS):
        centres = rng.uniform(low, high, size=(len(config.colors), 2))
        gaps = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)
        np.fill_diagonal(gaps, np.inf)
        if gaps.min() >= config.min_separation:
            yaws = rng.uniform(-config.max_yaw, config.max_yaw, size=len(config.colors))
            return tuple(
                CubePlacement(color, float(c[0]), float(c[1]), float(yaw))
                for color, c, yaw in zip(config.colors, centres, yaws, strict=True)
            )
    raise SceneError(
        f"could not place {len(config.colors)} cubes {config.min_separation} m apart in "
        f"{config.region_min}..{config.region_max} after {MAX_ATTEMPTS} attempts"
    )
