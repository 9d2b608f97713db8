"""The training configuration: recipes load, a run's saved config reads back equal, bad values are
named errors, the learning-rate schedule has the documented shape."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from magma_ros.training.config import CONFIG_FILE, AugmentConfig, LoraConfig, TrainConfig, TrainConfigError
from magma_ros.training.trainer import lr_factor

RECIPES = sorted((Path(__file__).resolve().parents[2] / "training").glob("*.yaml"))


def test_every_recipe_loads():
    assert {p.name for p in RECIPES} >= {"magma_tiny_sim.yaml", "magma8b_lora.yaml", "magma8b_full_fsdp.yaml"}
    configs = {p.name: TrainConfig.from_yaml(p) for p in RECIPES}
    lora = configs["magma8b_lora.yaml"]
    assert lora.is_lora and lora.lora.rank == 16 and lora.weights_dtype == "bf16" and lora.gradient_checkpointing
    assert configs["magma8b_full_fsdp.yaml"].parallel == "fsdp" and configs["magma8b_full_fsdp.yaml"].lr == 1e-5
    assert not configs["magma_tiny_sim.yaml"].is_lora
    assert all(c.action_frame_size == 256 for c in configs.values())   # what the policy serves with


def test_saved_config_reads_back_equal(tmp_path):
    config = TrainConfig(steps=12, lr=3e-4, lora=LoraConfig(rank=4, target_modules=("q_proj",)),
                         augment=AugmentConfig(enabled=True, crop_scale=0.8), betas=(0.9, 0.95), tom_frame_size=128)
    path = config.save(tmp_path)
    assert path == tmp_path / CONFIG_FILE
    assert TrainConfig.from_yaml(path) == config
    assert TrainConfig.from_dict({"lora": True}).lora == LoraConfig()
    assert TrainConfig.from_dict({"lora": None}).lora is None
    regions = TrainConfig(action_regions=((0.65, 0.0, 1.0, 0.35),))
    assert TrainConfig.from_yaml(regions.save(tmp_path)) == regions
    assert TrainConfig.from_dict({"action_regions": []}).action_regions == ()
    assert TrainConfig.from_dict({"action_regions": None}).action_regions is None


@pytest.mark.parametrize(("data", "message"), [
    ({"steps": 0}, "steps: must be an integer >= 1"),
    ({"stepz": 3}, "unknown setting"),
    ({"lr": "fast"}, "lr: expected"),
    ({"lr": -1.0}, "lr: must be > 0"),
    ({"batch_size": True}, "batch_size"),
    ({"tom_ratio": 1.5}, "tom_ratio"),
    ({"tom_mixing": "batch"}, "tom_mixing"),
    ({"freeze": "vision_tower"}, "freeze"),
    ({"freeze": [""]}, "freeze"),
    ({"precision": "fp8"}, "precision"),
    ({"parallel": "zero3"}, "parallel"),
    ({"lora": {"rank": 0}}, "lora.rank"),
    ({"lora": {"ranks": 4}}, "lora: unknown"),
    ({"augment": {"crop_scale": 0.0}}, "augment.crop_scale"),
    ({"betas": [0.9]}, "betas"),
    ({"action_regions": [[0.7, 0.0, 0.6, 0.3]]}, "action_regions"),
    ({"action_regions": [0.65, 0.0, 1.0, 0.35]}, "action_regions"),
    ({"weights_dtype": "bf16"}, "full fine-tuning keeps fp32"),
])
def test_bad_settings_are_named(data, message):
    with pytest.raises(TrainConfigError, match=message) as info:
        TrainConfig.from_dict(data, source="recipe.yaml")
    assert str(info.value).startswith("recipe.yaml:")


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(TrainConfigError, match="cannot read"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(TrainConfigError, match="expected a mapping"):
        TrainConfig.from_yaml(listed)


def test_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(factors[:10]))
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
