"""Bad checkpoints fail loudly, and every message names the file, field or tensor."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from magma_ros.model import (
    CheckpointError,
    ConfigError,
    MagmaModelError,
    TokenizerError,
    load_checkpoint,
)
from magma_ros.model.loading import INDEX_FILE


@pytest.fixture()
def single(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    return target


@pytest.fixture()
def sharded(tiny_sharded_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_sharded_dir, target)
    return target


def _raises(directory, error, *fragments, **kwargs):
    with pytest.raises(error) as info:
        load_checkpoint(directory, **kwargs)
    assert isinstance(info.value, MagmaModelError)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


def test_missing_directory(tmp_path):
    _raises(tmp_path / "nope", CheckpointError, "nope")


def test_missing_config(single):
    (single / "config.json").unlink()
    _raises(single, CheckpointError, "config.json")


def test_config_without_vision_config(single):
    path = single / "config.json"
    data = json.loads(path.read_text())
    del data["vision_config"]
    path.write_text(json.dumps(data))
    _raises(single, ConfigError, "config.json", "vision_config")


def test_config_bad_field_named(single):
    path = single / "config.json"
    data = json.loads(path.read_text())
    data["text_config"]["num_key_value_heads"] = 3
    path.write_text(json.dumps(data))
    _raises(single, ConfigError, "config.json", "num_key_value_heads")


def test_config_not_json(single):
    (single / "config.json").write_text("{not json")
    _raises(single, ConfigError, "config.json", "JSON")


def test_missing_tokenizer(single):
    (single / "tokenizer.json").unlink()
    _raises(single, TokenizerError, "tokenizer.json")


def test_missing_shard(sharded):
    (sharded / "model-00002-of-00003.safetensors").unlink()
    _raises(sharded, CheckpointError, "model-00002-of-00003.safetensors", INDEX_FILE)


def test_no_weights(single):
    (single / "model.safetensors").unlink()
    _raises(single, CheckpointError, "model.safetensors")


def test_corrupt_safetensors_header(single):
    path = single / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8:20] = b"\xff" * 12  # break the JSON header
    path.write_bytes(bytes(raw))
    _raises(single, CheckpointError, "model.safetensors", "corrupt")


def test_garbage_file(single):
    (single / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"garbage")
    _raises(single, CheckpointError, "model.safetensors")


def test_truncated_safetensors(single):
    path = single / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    _raises(single, CheckpointError, "model.safetensors", "truncated")


def test_truncated_to_nothing(single):
    (single / "model.safetensors").write_bytes(b"\x01\x02")
    _raises(single, CheckpointError, "model.safetensors", "truncated")


def _rewrite(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_shape_mismatch_named(single):
    key = "multi_modal_projector.proj.0.weight"
    _rewrite(single, lambda t: t.__setitem__(key, torch.zeros(3, 5)))
    err = _raises(single, CheckpointError, "shape mismatch", key, "[3, 5]")
    assert "model.safetensors" in str(err)


def test_missing_parameter_named(single):
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    _rewrite(single, lambda t: t.pop(key))
    _raises(single, CheckpointError, "missing", key)


def test_missing_gamma_named(single):
    key = "vision_tower.clip_vision_model.trunk.stages.0.blocks.0.gamma"
    _rewrite(single, lambda t: t.pop(key))
    _raises(single, CheckpointError, key)


def test_unexpected_key_strict_and_lenient(single):
    _rewrite(single, lambda t: t.__setitem__("language_model.model.surprise", torch.ones(2)))
    _raises(single, CheckpointError, "language_model.model.surprise", "strict=False")
    loaded = load_checkpoint(single, strict=False)
    assert loaded.report.unexpected == ("language_model.model.surprise",)


def test_conv_mlp_tower_rejected(single):
    key = "vision_tower.clip_vision_model.trunk.stages.0.blocks.0.mlp.fc1.weight"

    def to_conv(t):
        t[key] = t[key][:, :, None, None].contiguous()

    _rewrite(single, to_conv)
    _raises(single, CheckpointError, key, "Linear MLP")


def test_index_points_to_wrong_shard(sharded):
    path = sharded / INDEX_FILE
    index = json.loads(path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "model-00003-of-00003.safetensors"
    path.write_text(json.dumps(index))
    _raises(sharded, CheckpointError, key, INDEX_FILE)


def test_bad_dtype_option(single):
    _raises(single, ConfigError, "int8", dtype="int8")
