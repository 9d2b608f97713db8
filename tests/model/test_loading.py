"""Loading checkpoints: round trips, the published Magma-8B layout, dtype/device options."""

from __future__ import annotations

import json

import pytest
import torch

from magma_ros.model import (
    MagmaImageProcessor,
    MagmaPolicy,
    PreprocessorConfig,
    PromptBuilder,
    load_checkpoint,
    robot_action_query,
)
from magma_ros.model.loading import INDEX_FILE, KNOWN_UNUSED_PREFIXES
from magma_ros.model.safetensors_reader import SafetensorsFile


def _logits(model, tokenizer, image):
    processor = MagmaImageProcessor(PreprocessorConfig(base_img_size=model.config.vision.img_size))
    processed = processor(image)
    ids = torch.tensor(PromptBuilder(tokenizer).encode(robot_action_query("stack the blue cube")))
    with torch.no_grad():
        return model(ids, processed.pixel_values, [processed.image_size])


@pytest.mark.parametrize("which", ["tiny_dir", "tiny_sharded_dir"])
def test_round_trip_logits_identical(which, tiny, frame, request):
    model, tokenizer = tiny
    directory = request.getfixturevalue(which)
    loaded = load_checkpoint(directory, dtype="fp32")
    expected = _logits(model, tokenizer, frame)
    got = _logits(loaded.model, loaded.tokenizer, frame)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5
    assert loaded.report.missing == () and loaded.report.unexpected == () and loaded.report.ignored == ()
    assert loaded.report.num_tensors == len(list(model.parameters()))


def test_sharded_layout_has_index(tiny_sharded_dir):
    index = json.loads((tiny_sharded_dir / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert index["metadata"]["total_size"] > 0


def test_magma8b_layout_loads_with_only_known_unused_keys(layout_fixture):
    loaded = load_checkpoint(layout_fixture.directory)
    report = loaded.report
    assert report.missing == ()
    assert report.unexpected == ()
    assert set(report.ignored) == set(layout_fixture.unused_keys)
    assert all(k.startswith(KNOWN_UNUSED_PREFIXES) for k in report.ignored)
    assert len(report.weight_files) == 4
    assert report.vision_spec.dims == layout_fixture.model.vision_spec.dims
    # config.json had null top-level bos/eos/pad: taken from text_config
    assert loaded.config.text.bos_token_id == loaded.tokenizer.bos_id
    assert loaded.config.text.eos_token_id == (loaded.tokenizer.eos_id,)


def test_magma8b_layout_gamma_survives(layout_fixture):
    key = "vision_tower.clip_vision_model.trunk.stages.2.blocks.1.gamma"
    shard = json.loads((layout_fixture.directory / INDEX_FILE).read_text())["weight_map"][key]
    on_disk = dict(SafetensorsFile.open(layout_fixture.directory / shard).iter_tensors({key}))[key]
    loaded = load_checkpoint(layout_fixture.directory)
    gamma = loaded.model.get_parameter(key)
    # random layer scales in [0.5, 1.5], far from timm's 1e-6 init: a dropped gamma would show
    assert gamma.min().item() > 0.4
    assert torch.equal(gamma, on_disk.float())


def test_magma8b_layout_logits_match_source(layout_fixture, frame):
    loaded = load_checkpoint(layout_fixture.directory, dtype="fp32")
    expected = _logits(layout_fixture.model, layout_fixture.tokenizer, frame)
    got = _logits(loaded.model, loaded.tokenizer, frame)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             (torch.float32, torch.float32)])
def test_dtype_option(tiny_dir, name, dtype):
    loaded = load_checkpoint(tiny_dir, dtype=name, device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    assert loaded.report.dtype == dtype


def test_policy_from_pretrained_bf16_runs(tiny_dir, frame):
    policy = MagmaPolicy.from_pretrained(tiny_dir, dtype="bf16")
    step = policy.predict_action(frame, "open the drawer")
    assert len(step.token_ids) == 7
    assert all(policy.action_token_range.contains(t) for t in step.token_ids)


def test_missing_preprocessor_config_falls_back(tiny, tmp_path):
    from magma_ros.model import save_checkpoint

    model, tokenizer = tiny
    save_checkpoint(model, tokenizer, tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    loaded = load_checkpoint(tmp_path)
    assert loaded.preprocessor.base_img_size == model.config.vision.img_size
    assert any("preprocessor_config.json" in n for n in loaded.report.notes)


def test_dataset_statistics_loaded(tiny, tmp_path):
    from magma_ros.model import save_checkpoint

    model, tokenizer = tiny
    stats = {"my_robot": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}}
    save_checkpoint(model, tokenizer, tmp_path, dataset_statistics=stats)
    assert load_checkpoint(tmp_path).dataset_statistics == stats


def test_null_token_ids_everywhere_come_from_tokenizer(tiny_dir, tmp_path):
    import shutil

    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    path = target / "config.json"
    data = json.loads(path.read_text())
    for where in (data, data["text_config"]):
        where.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    path.write_text(json.dumps(data))
    loaded = load_checkpoint(target)
    tok = loaded.tokenizer
    assert loaded.config.text.bos_token_id == tok.bos_id
    assert loaded.config.text.eos_token_id == (tok.eos_id,)
    assert loaded.config.text.pad_token_id == tok.pad_id


def test_image_start_end_flag_wraps_prompt(tiny_dir, tmp_path):
    import shutil

    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    path = target / "config.json"
    data = json.loads(path.read_text())
    data["mm_use_image_start_end"] = True
    path.write_text(json.dumps(data))
    policy = MagmaPolicy.from_pretrained(target)
    ids = policy.prompt_builder.action_prompt("lift the lid")
    image = ids.index(policy.tokenizer.token_id("<image>"))
    assert ids[image - 1] == policy.tokenizer.token_id("<image_start>")
