"""Fine-tuning end to end on tiny models: a checkpoint loaded from disk is trained (full and
LoRA), the held-out loss falls, a resumed run continues the same curve, the export loads in the
runtime unchanged, and 2 torchrun processes (gloo) end where one process over the combined
batch ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from magma_ros.codecs import ActionStatistics
from magma_ros.model import GenerationError, build_tiny_model, load_checkpoint, save_checkpoint
from magma_ros.model.finetune import SupervisedExample, fit
from magma_ros.model.policy import MagmaPolicy
from magma_ros.training.collate import DataSource
from magma_ros.training.config import AugmentConfig, LoraConfig, TrainConfig
from magma_ros.training.records import StepRecord
from magma_ros.training.trainer import (
    CHECKPOINTS_DIR,
    CURVE_FILE,
    FINAL_DIR,
    METRICS_FILE,
    Trainer,
    TrainingError,
    load_base,
    step_dir_name,
)

REPO = Path(__file__).resolve().parents[2]
STATS = ActionStatistics("synthetic", q01=(-0.02, -0.02, -0.02, -0.1, -0.1, -0.1, 0.0),
                         q99=(0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 1.0))


def synthetic_episode(episode: int, steps: int, rng: np.random.Generator):
    """Frames with a red block whose column decides dx; the gripper closes half way."""
    images, actions = [], []
    for t in range(steps):
        image = np.full((64, 64, 3), 40, np.uint8)
        x = int(rng.integers(0, 48))
        image[20:36, x:x + 16] = (220, 30, 30)
        images.append(image)
        actions.append([(x - 24) / 24 * 0.02, 0.01, -0.01, 0.0, 0.0, 0.05, 0.0 if t >= steps // 2 else 1.0])
    return images, np.array(actions)


def synthetic_source(episodes: int = 4, steps: int = 6, seed: int = 0) -> DataSource:
    rng = np.random.default_rng(seed)
    records, owners = [], []
    for e in range(episodes):
        images, actions = synthetic_episode(e, steps, rng)
        for t in range(steps):
            records.append(StepRecord(f"ep{e}", t, t, images[t], actions[t], np.zeros(7), "pick up the red block"))
            owners.append(f"ep{e}")
    entry = {"action": {"q01": list(STATS.q01), "q99": list(STATS.q99), "mask": [True] * 6 + [False]}}
    return DataSource("synthetic", STATS, records, owners, (), entry)


def small_config(**changes) -> TrainConfig:
    base = {"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3, "save_every": 3,
            "action_frame_size": 64, "eval_fraction": 0.25, "eval_generate": 2, "eval_max_examples": 8,
            "precision": "fp32", "log_every": 1}
    base.update(changes)
    return TrainConfig(**base)



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread: None) -> None:
    """These modules train: one torch thread (see tests/training/conftest.py)."""


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def source() -> DataSource:
    return synthetic_source()


def _trainer(config, checkpoint, source, out):
    return Trainer(config, load_base(checkpoint, None, config, torch.device("cpu")), [source], out)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    model = load_checkpoint(directory).model
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "rotary" not in k}


def test_loaded_checkpoint_is_trainable(base_checkpoint):
    frozen = load_checkpoint(base_checkpoint)
    assert not any(p.requires_grad for p in frozen.model.parameters()) and not frozen.model.training
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    example = SupervisedExample(image, "What is in the image?", "the red block")
    with pytest.raises(GenerationError, match="trainable=True"):
        fit(MagmaPolicy(frozen.model, frozen.tokenizer, frozen.preprocessor), [example], steps=1)
    loaded = load_checkpoint(base_checkpoint, trainable=True)
    assert all(p.requires_grad for p in loaded.model.parameters()) and loaded.model.training
    # the single-example fit() of finetune works on a loaded checkpoint (it failed with 0 parameters)
    policy = MagmaPolicy(loaded.model, loaded.tokenizer, loaded.preprocessor)
    losses = fit(policy, [example], steps=4, lr=3e-3)
    assert losses[-1] < losses[0]


def test_full_finetune_from_disk_lowers_held_out_loss_and_exports(base_checkpoint, source, tmp_path):
    trainer = _trainer(small_config(), base_checkpoint, source, tmp_path)
    assert trainer.trainable_params == sum(p.numel() for p in trainer.module.parameters())
    before = trainer.evaluate()
    result = trainer.fit(progress=False)
    after = result.evals[-1]
    assert after["loss"] < 0.8 * before["loss"], (before["loss"], after["loss"])
    assert after["action_token_accuracy"] > before["action_token_accuracy"]
    assert set(after["action_abs_error"]) == {"dx", "dy", "dz", "droll", "dpitch", "dyaw"}
    assert 0.0 <= after["gripper_accuracy"] <= 1.0
    # exported in the runtime's format; the runtime loads it unchanged and gets the trained weights
    final = result.final_dir
    assert final == tmp_path / FINAL_DIR
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "dataset_statistics.json", "README.md"):
        assert (final / name).is_file(), name
    stats = json.loads((final / "dataset_statistics.json").read_text())
    assert stats["synthetic"]["action"]["q01"] == list(STATS.q01)
    card = (final / "README.md").read_text()
    assert "Steps: 6 of 6" in card and "synthetic" in card and "action_token_accuracy" in card
    exported = _tensors(final)
    live = {k: v for k, v in trainer.module.model.state_dict().items() if "rotary" not in k}
    assert exported.keys() == live.keys()
    assert all(torch.equal(exported[k], live[k]) for k in live)
    assert not torch.equal(exported["language_model.lm_head.weight"], _tensors(base_checkpoint)[
        "language_model.lm_head.weight"])
    from magma_ros.backends.torch_backend import TorchBackend

    backend = TorchBackend(final, statistics="")    # the checkpoint's only statistics entry
    output = backend.act(source.steps[0].image, "pick up the red block")
    assert output.valid and output.statistics == "synthetic" and len(output.token_ids) == 7
    assert (tmp_path / CURVE_FILE).stat().st_size > 1000
    lines = [json.loads(x) for x in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == list(range(1, 7))
    assert (tmp_path / "train_config.yaml").is_file()


def test_frozen_modules_keep_their_loaded_weights_and_the_rest_trains(base_checkpoint, source, tmp_path):
    config = small_config(steps=3, eval_every=100, save_every=100, freeze=("vision_tower",))
    trainer = _trainer(config, base_checkpoint, source, tmp_path)
    vision = sum(p.numel() for n, p in trainer.module.named_parameters() if ".vision_tower." in f".{n}")
    assert vision > 0
    assert trainer.trainable_params == sum(p.numel() for p in trainer.module.parameters()) - vision
    result = trainer.fit(progress=False)
    before, after = _tensors(base_checkpoint), _tensors(result.final_dir)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and not any(k.startswith("vision_tower.") for k in moved)
    assert any(k.startswith("multi_modal_projector.") for k in moved)
    assert "Frozen: vision_tower" in (result.final_dir / "README.md").read_text()
    with pytest.raises(TrainingError, match="'vision_towr' names no parameter"):
        _trainer(small_config(freeze=("vision_towr",)), base_checkpoint, source, tmp_path / "typo")


def test_action_regions_are_trained_on_and_saved_with_the_checkpoint(base_checkpoint, source, tmp_path):
    """``action_regions`` in the recipe: the action examples carry the region as a second image, and the
    trained checkpoint's preprocessor keeps it, so the policy serves the prompt it was trained on."""
    region = (0.5, 0.0, 1.0, 0.5)
    trainer = _trainer(small_config(steps=2, eval_every=100, save_every=100, action_regions=(region,)),
                       base_checkpoint, source, tmp_path)
    assert trainer.bundle.preprocessor.action_regions == (region,)
    result = trainer.fit(progress=False)
    saved = json.loads((result.final_dir / "preprocessor_config.json").read_text())
    assert saved["action_regions"] == [list(region)]
    policy = MagmaPolicy.from_pretrained(result.final_dir)
    assert policy.action_regions == (region,)
    frame = source.steps[0].image
    step = policy.predict_action(frame, "pick up the red block")
    assert len(step.token_ids) == 7
    prompt = policy.prompt_builder.encode(policy.action_query("pick up the red block"))
    assert prompt.count(policy.model.image_token_index) == 2
    # the starting checkpoint had none: a plain config keeps that
    plain = _trainer(small_config(steps=1), base_checkpoint, source, tmp_path / "plain")
    assert plain.bundle.preprocessor.action_regions == ()


def test_statistics_from_checkpoint_keeps_what_the_action_tokens_mean(source, tmp_path):
    """statistics_from: checkpoint encodes the new data's actions with the starting checkpoint's statistics of
    the same name (not the data's own), and the fine-tuned model exports those; a checkpoint without that name
    is refused, naming what it has."""
    from magma_ros.codecs import ActionCodec
    from magma_ros.training.config import TrainConfigError
    from magma_ros.training.trainer import with_checkpoint_statistics

    wide = {"action": {"q01": [-0.05] * 6 + [0.0], "q99": [0.05] * 6 + [1.0], "mask": [True] * 6 + [False]}}
    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    start = save_checkpoint(model, tokenizer, tmp_path / "start", dataset_statistics={"synthetic": wide})
    config = small_config(steps=2, eval_every=100, save_every=100, statistics_from="checkpoint")
    bundle = load_base(start, None, config, torch.device("cpu"))
    (kept,) = with_checkpoint_statistics([source], bundle)
    assert kept.statistics.q01 == tuple(wide["action"]["q01"]) and kept.statistics_entry == wide
    assert kept.statistics != source.statistics and kept.steps is source.steps
    codec = ActionCodec(tokenizer.base_vocab_size)
    action = np.asarray([0.015, -0.015, 0.01, 0.05, -0.05, 0.0, 1.0])
    assert not np.array_equal(codec.encode(action, kept.statistics), codec.encode(action, source.statistics))
    result = Trainer(config, bundle, [kept], tmp_path / "run").fit(progress=False)
    assert json.loads((result.final_dir / "dataset_statistics.json").read_text())["synthetic"] == wide
    bare = save_checkpoint(model, tokenizer, tmp_path / "bare", dataset_statistics={"other": wide})
    with pytest.raises(TrainingError, match=r"no action statistics named 'synthetic' .*it has: other"):
        with_checkpoint_statistics([source], load_base(bare, None, config, torch.device("cpu")))
    with pytest.raises(TrainConfigError, match="statistics_from"):
        small_config(statistics_from="dataset")


def test_action_smoothing_scores_the_step_with_the_smoothed_loss(base_checkpoint, source, tmp_path):
    from magma_ros.training.losses import smoothed_answer_loss

    losses = {}
    for sigma in (0.0, 8.0):
        trainer = _trainer(small_config(steps=1, action_smoothing_bins=sigma), base_checkpoint, source,
                           tmp_path / str(sigma))
        refs, positions = trainer._micro_batches(0)[0]
        with torch.no_grad():   # the step's own batch (augmentation is seeded by the step)
            out = trainer._forward(trainer._batch(refs, positions, 0, augment=True))
        expected = smoothed_answer_loss(out.logits, out.targets, out.example_index, len(refs),
                                        trainer.codec.token_range, sigma)
        losses[sigma] = trainer.train_step()
        assert losses[sigma] == pytest.approx(float(expected), rel=1e-5)
    assert losses[8.0] != pytest.approx(losses[0.0], rel=1e-3)   # the smoothed loss is another loss


def test_trace_smoothing_scores_trace_answers_with_the_smoothed_loss(base_checkpoint, tmp_path):
    from magma_ros.training.losses import smoothed_answer_loss

    source = _traced_source()
    losses = {}
    for sigma in (0.0, 4.0):
        config = small_config(steps=1, tom_ratio=1.0, tom_mixing="step", trace_smoothing_px=sigma)
        trainer = _trainer(config, base_checkpoint, source, tmp_path / str(sigma))
        refs, positions = trainer._micro_batches(0)[0]
        assert {r.kind for r in refs} == {"tom"}
        with torch.no_grad():
            out = trainer._forward(trainer._batch(refs, positions, 0, augment=True))
        expected = smoothed_answer_loss(out.logits, out.targets, out.example_index, len(refs),
                                        trainer.codec.token_range, 0.0, trainer.coordinate_ids, sigma)
        losses[sigma] = trainer.train_step()
        assert losses[sigma] == pytest.approx(float(expected), rel=1e-5)
    assert losses[4.0] != pytest.approx(losses[0.0], rel=1e-3)


def test_lora_from_disk_trains_adapters_and_merges_on_export(base_checkpoint, source, tmp_path):
    config = small_config(lora=LoraConfig(rank=4, alpha=8.0), lr=1e-2, steps=6, save_every=6)
    trainer = _trainer(config, base_checkpoint, source, tmp_path)
    names = [n for n, p in trainer.module.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and all("lora_" in n or "multi_modal_projector" in n for n in names)
    assert not any("vision_tower" in n or "embed_tokens" in n for n in names)
    before = trainer.evaluate()["loss"]
    result = trainer.fit(progress=False)
    assert result.evals[-1]["loss"] < before
    merged = _tensors(result.final_dir)            # peft merge_and_unload
    intermediate = _tensors(tmp_path / CHECKPOINTS_DIR / step_dir_name(6))   # base + delta, model untouched
    base = _tensors(base_checkpoint)
    assert merged.keys() == base.keys()
    for key in merged:
        assert torch.allclose(merged[key], intermediate[key], atol=1e-6), key
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[q], base[q])                      # adapters folded in
    embed = "language_model.model.embed_tokens.weight"
    assert torch.equal(merged[embed], base[embed])                     # frozen stays frozen


def test_resumed_run_continues_the_same_curve(base_checkpoint, tmp_path):
    source = synthetic_source(episodes=3, steps=4)
    config = small_config(steps=6, eval_every=100, save_every=100, batch_size=3, eval_generate=0,
                          augment=AugmentConfig(enabled=True))
    whole = _trainer(config, base_checkpoint, source, tmp_path / "whole").fit(progress=False)
    first = _trainer(config, base_checkpoint, source, tmp_path / "split").fit(until=3, progress=False)
    assert first.final_dir is None and first.last_state_dir == tmp_path / "split" / CHECKPOINTS_DIR / step_dir_name(3)
    resumed = _trainer(config, base_checkpoint, source, tmp_path / "split")
    resumed.load_state(first.last_state_dir)
    second = resumed.fit(progress=False)
    assert np.allclose(first.losses + second.losses, whole.losses, rtol=0, atol=1e-6), (first.losses, second.losses,
                                                                                        whole.losses)
    lines = [json.loads(x) for x in (tmp_path / "split" / METRICS_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == list(range(1, 7))
    assert np.allclose([x["loss"] for x in lines if x["kind"] == "train"], whole.losses, atol=1e-6)
    a, b = _tensors(whole.final_dir), _tensors(second.final_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(TrainingError, match="different settings"):
        _trainer(config.replace(lr=1e-4), base_checkpoint, source, tmp_path / "other").load_state(
            first.last_state_dir)


def _traced_source() -> DataSource:
    from magma_ros.training.records import TraceSample

    source = synthetic_source(episodes=4, steps=3)
    rng = np.random.default_rng(2)
    answer = 'Mark 1 at [30,40] should be moved, and their future positions are: "Mark 1": "[[34,40],[38,41]]"'
    question = ("The robot is doing: pick up the red block. To finish the task, how to move the numerical "
                "marks in the image for the next 2 steps?")
    source.traces = [TraceSample(f"ep{e}", 0, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), question, answer,
                                 {1: np.array([[34, 40], [38, 41]])}) for e in range(4)]
    return source


def test_tom_prompts_are_mixed_in_and_evaluated(base_checkpoint, tmp_path):
    source = _traced_source()
    config = small_config(steps=2, tom_ratio=0.5, eval_generate=1, eval_tom_max_new_tokens=8, save_every=100)
    trainer = _trainer(config, base_checkpoint, source, tmp_path)
    refs = [r for step in range(20) for refs, _ in trainer._micro_batches(step) for r in refs]
    assert 0.3 < sum(r.kind == "tom" for r in refs) / len(refs) < 0.7
    result = trainer.evaluate()
    assert {"tom_loss", "action_loss", "tom_parse_rate", "gripper_accuracy"} <= set(result)
    assert result["tom_parse_rate"] == 0.0          # 8 tokens cannot hold a whole trace answer
    assert result["examples"] == len(trainer.eval_pool)


def _write_dataset(root: Path, episodes: int = 4, steps: int = 4) -> Path:
    from magma_ros.training.dataset import DatasetWriter

    writer = DatasetWriter(root, "synthetic")
    rng = np.random.default_rng(5)
    for e in range(episodes):
        images, actions = synthetic_episode(e, steps, rng)
        writer.write_episode(f"ep{e}", stamps_ns=list(range(steps)), images=images, actions=actions,
                             states=np.zeros((steps, 7)), instructions="pick up the red block")
    writer.write_statistics()
    return root


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=full_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_over_the_combined_batch(tmp_path):
    data = _write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    # Magma's fine-tuning learning rate: AdamW divides by sqrt(v), so float32 differences between batch
    # shapes (~1e-6 relative in the gradients) grow into parameter differences proportional to lr
    recipe.write_text("steps: 3\nwarmup_steps: 1\nlr: 0.00001\naction_frame_size: 64\neval_every: 100\n"
                      "save_every: 100\neval_generate: 0\nprecision: fp32\neval_fraction: 0.25\nparallel: ddp\n"
                      "log_every: 1\n")
    common = ["--init", "tiny:magma-tiny", "--data", str(data), "--config", str(recipe), "--no-progress",
              "--device", "cpu"]
    _run([sys.executable, "-m", "magma_ros.cli.train", *common, "--out", str(tmp_path / "one"), "--batch-size", "4"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "magma_ros.cli.train", *common, "--out", str(tmp_path / "two"), "--batch-size", "2"])
    one, two = _tensors(tmp_path / "one" / FINAL_DIR), _tensors(tmp_path / "two" / FINAL_DIR)
    start = build_tiny_model("magma-tiny", seed=0)[0].state_dict()
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-6, worst
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert moved > 2e-5          # it did train: about lr per step
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / METRICS_FILE).read_text().splitlines()
               if json.loads(x)["kind"] == "train"] for run in ("one", "two")]
    assert len(losses[0]) == 3 and np.allclose(losses[0], losses[1], rtol=0, atol=1e-5), losses


@pytest.mark.slow
def test_cli_trains_on_a_recorded_dataset(sim_dataset, tmp_path):
    """`magma-ros train` from scratch on bags recorded by record-demos: held-out loss falls and the
    exported checkpoint predicts through the policy node's backend."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps: 8\nbatch_size: 4\nwarmup_steps: 1\nlr: 0.003\naction_frame_size: 64\n"
                      "eval_every: 4\nsave_every: 4\neval_generate: 2\nprecision: fp32\neval_fraction: 0.5\n")
    out = tmp_path / "run"
    from magma_ros.cli import main

    assert main(["train", "--init", "tiny:magma-tiny", "--data", str(sim_dataset), "--config", str(recipe),
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    evals = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [4, 8]
    assert evals[-1]["loss"] < evals[0]["loss"]
    from magma_ros.backends.torch_backend import TorchBackend
    from magma_ros.training.dataset import TrajectoryDataset

    data = TrajectoryDataset(sim_dataset)
    output = TorchBackend(out / FINAL_DIR, statistics="").act(data[0].image, data[0].instruction)
    assert output.valid and output.statistics == data.name


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from magma_ros.cli import main

    assert main(["train", "--init", "tiny:magma-tiny", "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o"), "--no-progress", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("magma-ros train:"), err
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    assert main(["train", "--init", "tiny:magma-tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--config", str(bad)]) == 2
    assert "stepz" in capsys.readouterr().err
