import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magma_ros.sim import SceneConfig, SceneError
from magma_ros.sim.scene import sample_layout


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_layout_is_inside_the_region_and_spaced(seed):
    config = SceneConfig()
    layout = sample_layout(config, seed)
    assert [p.color for p in layout] == list(config.colors)
    xy = np.array([[p.x, p.y] for p in layout])
    assert np.all(xy >= config.region_min) and np.all(xy <= config.region_max)
    gaps = [np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) >= config.min_separation
    assert all(abs(p.yaw) <= config.max_yaw for p in layout)


def test_layout_is_a_function_of_the_seed():
    assert sample_layout(SceneConfig(), 7) == sample_layout(SceneConfig(), 7)
    assert sample_layout(SceneConfig(), 7) != sample_layout(SceneConfig(), 8)


def test_impossible_region_raises():
    crowded = SceneConfig(region_min=(0.5, 0.0), region_max=(0.52, 0.02), min_separation=0.1)
    with pytest.raises(SceneError, match="could not place"):
        sample_layout(crowded, 0)
