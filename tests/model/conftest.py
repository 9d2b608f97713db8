"""Shared tiny checkpoints for the model-core tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magma_ros.model import (
    MagmaPolicy,
    PreprocessorConfig,
    build_tiny_model,
    save_checkpoint,
    write_magma8b_layout_fixture,
)
from magma_ros.model.fixtures import LayoutFixture


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the default magma-tiny variant, float32, seed 0."""
    return build_tiny_model("magma-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory) -> Path:
    """The tiny model saved as a single model.safetensors."""
    model, tokenizer = tiny
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny_single"), shards=1)


@pytest.fixture(scope="session")
def tiny_sharded_dir(tiny, tmp_path_factory) -> Path:
    """The tiny model saved as 3 shards + index."""
    model, tokenizer = tiny
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny_sharded"), shards=3)


@pytest.fixture(scope="session")
def layout_fixture(tmp_path_factory) -> LayoutFixture:
    """A tiny checkpoint in Magma-8B's exact published layout."""
    return write_magma8b_layout_fixture(tmp_path_factory.mktemp("magma8b_layout"))


@pytest.fixture(scope="session")
def policy(tiny) -> MagmaPolicy:
    model, tokenizer = tiny
    return MagmaPolicy(model, tokenizer, PreprocessorConfig(base_img_size=model.config.vision.img_size))


@pytest.fixture()
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
