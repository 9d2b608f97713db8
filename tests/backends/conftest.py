"""Shared fixtures: one magma-tiny checkpoint and its ONNX export per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint dir, loaded float32 MagmaPolicy) for magma-tiny, seed 0."""
    from magma_ros.model import MagmaPolicy, build_tiny_model, save_checkpoint

    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    directory = save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny_ckpt"))
    return directory, MagmaPolicy.from_pretrained(directory, dtype="float32")


@pytest.fixture(scope="session")
def tiny_export(tiny_pair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from magma_ros.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("tiny_onnx")
    export_checkpoint(tiny_pair[0], out)
    return out
