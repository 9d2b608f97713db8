"""Parallel wrappers on a meta-built model: FSDP over 8 ranks builds for Magma-8B's layout without
allocating anything; LoRA targets only the language model; weights load into wrapped models;
the memory plan's arithmetic."""

from __future__ import annotations

import pytest
import torch

from magma_ros.model import build_tiny_model, save_checkpoint
from magma_ros.model.loading import checkpoint_name, load_checkpoint, open_checkpoint
from magma_ros.training.config import LoraConfig
from magma_ros.training.parallelize import (
    TrainingModule,
    apply_activation_checkpointing,
    apply_fsdp,
    apply_lora,
    build_meta_model,
    lora_merged_tensors,
    magma8b_config,
    memory_plan,
    merged_lora_model,
    shard_units,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread: None) -> None:
    """These modules train: one torch thread (see tests/training/conftest.py)."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny"))


def test_fsdp_wraps_the_magma8b_layout_on_the_meta_device():
    """8 ranks (a fake process group in one process): every decoder layer and ConvNeXt stage is a
    shard unit and each rank holds 1/8 of every parameter; nothing is allocated."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
    try:
        mesh = init_device_mesh("cpu", (8,))
        config, spec = magma8b_config()
        model = build_meta_model(config, spec)
        total = sum(p.numel() for p in model.parameters())
        assert 8.7e9 < total < 9.1e9
        apply_activation_checkpointing(model)
        root = apply_fsdp(TrainingModule(model), model, mesh)
        units = shard_units(model)
        assert len(units) == 32 + 4
        params = list(root.named_parameters())
        assert params and all(isinstance(p, DTensor) and p.is_meta for _, p in params)
        local = sum(p.to_local().numel() for _, p in params)
        assert local <= total / 8 + 8 * len(params)          # dim-0 sharding, padding at most a row each
        gate = model.language_model.model.layers[31].mlp.gate_proj.weight
        assert gate.shape == (14336, 4096) and gate.to_local().shape == (14336 // 8, 4096)
        assert model.language_model.lm_head.weight.to_local().shape == (128320 // 8, 4096)
        assert all(hasattr(u, "unshard") for u in units)      # fully_shard turned each unit into an FSDP module
    finally:
        dist.destroy_process_group()


def test_memory_plan_for_magma8b():
    config, spec = magma8b_config()
    model = build_meta_model(config, spec)
    full = memory_plan(model, world_size=8)
    assert full.trainable_params == full.total_params
    assert full.per_gpu_bytes == pytest.approx(16 * full.total_params / 8, rel=1e-6)
    assert full.per_gpu_bytes < 20 * 1024 ** 3               # fits 8 x 80 GB with room for activations
    lora = memory_plan(model, world_size=1, lora=LoraConfig(rank=16))
    assert lora.trainable_params < 0.02 * lora.total_params
    assert 16 * 1024 ** 3 < lora.per_gpu_bytes < 20 * 1024 ** 3   # bf16 base on one 24-48 GB GPU
    assert "LoRA" in lora.describe() and "GiB" in full.describe()


def test_weights_load_into_a_wrapped_meta_model(tiny_dir):
    """The torchtitan order: build on meta, wrap (activation checkpointing), then load."""
    opened = open_checkpoint(tiny_dir)
    apply_activation_checkpointing(opened.model)
    wrapped = TrainingModule(opened.model)
    report = opened.load_weights(model=wrapped, requires_grad=True)
    reference = load_checkpoint(tiny_dir).model
    assert report.num_tensors == len(list(reference.parameters()))
    ours = dict(opened.model.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.equal(ours[name], param) and ours[name].requires_grad
    assert checkpoint_name("module.model._checkpoint_wrapped_module.language_model.lm_head.weight") == \
        "language_model.lm_head.weight"
    assert checkpoint_name("base_model.model.language_model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "language_model.model.layers.0.self_attn.q_proj.weight"


def test_lora_targets_language_model_and_merges(tiny_dir):
    model = load_checkpoint(tiny_dir, trainable=True).model
    peft_model = apply_lora(model, LoraConfig(rank=2, train_projector=False))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model.model.layers." in n for n in trainable)
    with torch.no_grad():   # make the adapters non-zero (lora_B starts at zero)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    preview = lora_merged_tensors(peft_model)
    merged = merged_lora_model(peft_model)
    for name, p in merged.named_parameters():
        assert torch.allclose(preview[name], p, atol=1e-6), name
    base = load_checkpoint(tiny_dir).model
    q = "language_model.model.layers.1.self_attn.v_proj.weight"
    assert not torch.allclose(dict(merged.named_parameters())[q], dict(base.named_parameters())[q])


@pytest.mark.slow
def test_fsdp_training_on_cpu_matches_one_process_and_resumes(tiny_dir, tmp_path):
    """The real FSDP path under torchrun (2 gloo processes): meta build -> fully_shard -> per-rank
    shard loads -> train -> export; same parameters as one process over the combined batch, and a
    run resumed from its torch.distributed.checkpoint state ends bit-identical."""
    import shutil
    import sys

    from tests.training.test_trainer import _run, _tensors, _write_dataset

    data = _write_dataset(tmp_path / "data")
    recipe = tmp_path / "fsdp.yaml"
    recipe.write_text("steps: 3\nwarmup_steps: 1\nlr: 0.00001\naction_frame_size: 64\neval_every: 2\n"
                      "save_every: 2\neval_generate: 0\nprecision: fp32\neval_fraction: 0.25\nparallel: fsdp\n")
    single = tmp_path / "single.yaml"
    single.write_text(recipe.read_text().replace("parallel: fsdp", "parallel: none"))
    common = ["--checkpoint", str(tiny_dir), "--data", str(data), "--no-progress", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "magma_ros.cli.train", *common, "--batch-size", "2", "--config", str(recipe)]
    _run([*torchrun, "--out", str(tmp_path / "fsdp")])
    _run([sys.executable, "-m", "magma_ros.cli.train", *common, "--batch-size", "4", "--config", str(single),
          "--out", str(tmp_path / "one")])
    state = tmp_path / "fsdp" / "checkpoints" / "step-000002"
    assert (state / "fsdp_state").is_dir()
    shutil.copytree(state, tmp_path / "resumed" / "checkpoints" / "step-000002")
    _run([*torchrun, "--out", str(tmp_path / "resumed"), "--resume", "auto"])
    fsdp, one, resumed = (_tensors(tmp_path / d / "model") for d in ("fsdp", "one", "resumed"))
    base = _tensors(tiny_dir)
    assert max((fsdp[k] - one[k]).abs().max().item() for k in fsdp) < 1e-6
    assert all(torch.equal(fsdp[k], resumed[k]) for k in fsdp)
    assert max((fsdp[k] - base[k]).abs().max().item() for k in fsdp) > 1e-5


def test_activation_checkpointing_gives_the_same_gradients():
    import numpy as np

    from magma_ros.model import MagmaPolicy, PreprocessorConfig
    from magma_ros.model.finetune import SupervisedExample, encode_example
    from magma_ros.training.collate import collate

    grads = []
    for checkpointing in (False, True):
        model, tokenizer = build_tiny_model("magma-tiny", seed=0)
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        if checkpointing:
            apply_activation_checkpointing(model)
            assert model.language_model.model.gradient_checkpointing
            assert all(stage.grad_checkpointing for stage in model.vision_tower.clip_vision_model.trunk.stages)
        policy = MagmaPolicy(model, tokenizer, PreprocessorConfig(base_img_size=64))
        image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        examples = [encode_example(policy, SupervisedExample(image, "What is in the image?", text))
                    for text in ("the red block", "a blue cube on the plate")]
        batch = collate(examples, tokenizer.pad_id)
        out = model.forward_batch(batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_sizes,
                                  batch.labels)
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    plain, recomputed = grads
    for name, grad in plain.items():
        assert torch.allclose(grad, recomputed[name], atol=1e-6, rtol=1e-5), name
