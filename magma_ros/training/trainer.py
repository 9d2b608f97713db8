"""Fine-tuning Magma: train step, held-out evaluation, checkpoint export, resume.

One :class:`Trainer` per process (torchrun starts one per GPU / CPU worker). Per optimizer step:
the step's examples (seeded by (seed, step), see :mod:`.collate`) are split over processes and
``grad_accum`` micro-batches; each micro-batch is encoded exactly as inference encodes prompts,
padded, and scored on its answer tokens only; AdamW with warmup + cosine, gradient clipping,
bf16 autocast on GPU. The loss is the mean over examples of each example's mean answer-token
cross-entropy, so N processes x B examples give the gradient of one process over N x B.

Output directory::

    OUT/
      train_config.yaml          the resolved configuration of the run
      metrics.jsonl              one line per logged step and per evaluation
      loss_curve.png             training and held-out loss
      checkpoints/step-000100/   a runtime checkpoint (config.json, model.safetensors, tokenizer,
                                 preprocessor_config.json, dataset_statistics.json, README.md model
                                 card) + trainer_state.pt (optimizer, schedule, step): resumable
      model/                     the final export (LoRA merged), what ``magma_policy_node`` loads
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from magma_ros.codecs import ACTION_DIM, ACTION_DIM_NAMES, GRIPPER_DIM, ActionCodec, parse_traces
from magma_ros.model.config import PreprocessorConfig
from magma_ros.model.loading import OpenedCheckpoint, checkpoint_name, open_checkpoint, resolve_dtype
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.policy import MagmaPolicy
from magma_ros.model.saving import save_checkpoint
from magma_ros.model.tokenizer import MagmaTokenizer
from magma_ros.training.collate import (
    ACTION,
    TOM,
    DataSource,
    ExampleEncoder,
    ExampleRef,
    collate,
    eval_refs,
    sample_refs,
    split_episodes,
)
from magma_ros.training.config import TrainConfig
from magma_ros.training.losses import coordinate_token_ids, smoothed_answer_loss
from magma_ros.training.parallelize import (
    DistContext,
    TrainingModule,
    apply_activation_checkpointing,
    apply_ddp,
    apply_fsdp,
    apply_lora,
    lora_merged_tensors,
    magma_of,
    merged_lora_model,
    unwrap,
)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "model"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
CARD_FILE = "README.md"


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warmup, then
    cosine down to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class ModelBundle:
    """A model ready to train with what the export needs: tokenizer, preprocessor, the base
    checkpoint's statistics, and where it came from."""

    model: MagmaForCausalLM
    tokenizer: MagmaTokenizer
    preprocessor: PreprocessorConfig
    base_statistics: Mapping[str, Any] | None = None
    origin: str = ""
    opened: OpenedCheckpoint | None = None   # set when weights are not loaded yet (meta model)


def load_base(checkpoint: str | Path | None, init: str | None, config: TrainConfig, device: torch.device,
              meta: bool = False) -> ModelBundle:
    """The model to fine-tune: a checkpoint directory (loaded trainable; with ``meta`` only
    opened and built on the meta device, for FSDP) or ``tiny:<variant>`` built from scratch."""
    if (checkpoint is None) == (init is None):
        raise TrainingError("give exactly one of a checkpoint directory or --init tiny:<variant>")
    if init is not None:
        from magma_ros.model.tiny import build_tiny_model

        kind, _, variant = init.partition(":")
        if kind != "tiny" or not variant:
            raise TrainingError(f"--init expects tiny:<variant> (e.g. tiny:magma-tiny), got {init!r}")
        model, tokenizer = build_tiny_model(variant, seed=config.seed)
        model.to(device)
        for p in model.parameters():
            p.requires_grad_(True)
        preprocessor = PreprocessorConfig(base_img_size=model.config.vision.img_size)
        return _with_regions(ModelBundle(model, tokenizer, preprocessor, None, init), config)
    opened = open_checkpoint(checkpoint)
    bundle = ModelBundle(opened.model, opened.tokenizer, opened.preprocessor, opened.dataset_statistics,
                         str(checkpoint), opened)
    if not meta:
        dtype = resolve_dtype(config.weights_dtype)
        opened.load_weights(dtype=dtype, device=device, requires_grad=True)
        bundle.opened = None
    return _with_regions(bundle, config)


def _with_regions(bundle: ModelBundle, config: TrainConfig) -> ModelBundle:
    """The config's ``action_regions`` (when set) in the preprocessor: what the examples are encoded with
    and what the trained checkpoint's policy serves."""
    if config.action_regions is not None:
        bundle.preprocessor = dataclasses.replace(bundle.preprocessor, action_regions=config.action_regions)
    return bundle


def freeze_parameters(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training every parameter whose name starts with one of ``prefixes`` (module paths of
    the Magma model, e.g. ``vision_tower``); returns how many tensors were frozen. A prefix that
    names no parameter is an error (a typo would otherwise train what was meant to stay)."""
    frozen = 0
    for prefix in prefixes:
        matched = [p for name, p in model.named_parameters() if name == prefix or name.startswith(prefix + ".")]
        if not matched:
            tops = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise TrainingError(f"freeze: {prefix!r} names no parameter of the model; top-level modules: {tops}")
        for p in matched:
            p.requires_grad_(False)
        frozen += len(matched)
    return frozen


def load_sources(data_dirs: Sequence[str | Path]) -> list[DataSource]:
    """Open each dataset directory (magma_ros.training.dataset layout) with its statistics and
    any Trace-of-Mark samples."""
    from magma_ros.training.dataset import TrajectoryDataset
    from magma_ros.training.records import STATISTICS_FILE

    if not data_dirs:
        raise TrainingError("no --data directory given")
    sources, names = [], set()
    for directory in data_dirs:
        data = TrajectoryDataset(directory)
        if data.name in names:
            raise TrainingError(f"two datasets are named {data.name!r}; their statistics would collide")
        names.add(data.name)
        episodes = [eid for eid in data.episode_ids for _ in range(data.episode_length(eid))]
        entry = json.loads((Path(directory) / STATISTICS_FILE).read_text(encoding="utf-8"))[data.name]
        sources.append(DataSource(data.name, data.statistics, data, episodes, _load_traces(Path(directory)),
                                  entry))
    return sources


def with_checkpoint_statistics(sources: Sequence[DataSource], bundle: ModelBundle) -> list[DataSource]:
    """``sources`` with the starting checkpoint's action statistics of each one's name in place of
    their own (``statistics_from: checkpoint``): the action tokens keep the meaning the model learned.
    Raises :class:`TrainingError` when the checkpoint has no statistics of that name."""
    from magma_ros.codecs import ActionStatistics, StatisticsError

    base = bundle.base_statistics or {}
    kept = []
    for source in sources:
        entry = base.get(source.name)
        action = entry.get("action") if isinstance(entry, Mapping) else None
        if not isinstance(action, Mapping):
            names = ", ".join(sorted(base)) or "none"
            raise TrainingError(f"statistics_from: checkpoint, but {bundle.origin or 'the checkpoint'} has no action "
                                f"statistics named {source.name!r} (it has: {names})")
        try:
            statistics = ActionStatistics(name=source.name, q01=action["q01"], q99=action["q99"],
                                          **({"mask": action["mask"]} if "mask" in action else {}))
        except (KeyError, StatisticsError) as err:
            raise TrainingError(f"{bundle.origin}: statistics {source.name!r}: {err}") from err
        kept.append(dataclasses.replace(source, statistics=statistics, statistics_entry=dict(entry)))
    return kept


def _load_traces(directory: Path) -> list:
    """Trace-of-Mark samples of a dataset (``traces/``, written by label-traces); [] without labels."""
    from magma_ros.training.trace_labels import load_trace_samples

    return load_trace_samples(directory)


@dataclass
class TrainResult:
    """What a run did: losses per optimizer step (this process's view), evaluations, paths."""

    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final_dir: Path | None = None
    last_state_dir: Path | None = None
    steps_done: int = 0
    seconds: float = 0.0


class Trainer:
    """Fine-tunes one model on a set of data sources; see the module docstring."""

    def __init__(self, config: TrainConfig, bundle: ModelBundle, sources: Sequence[DataSource],
                 out_dir: str | Path, ctx: DistContext | None = None, data_dirs: Sequence[str] = ()) -> None:
        self.config = config
        self.ctx = ctx or DistContext()
        self.out = Path(out_dir)
        self.sources = list(sources)
        self.data_dirs = [str(d) for d in data_dirs]
        self.bundle = bundle
        self.tokenizer = bundle.tokenizer
        self.device = self.ctx.device
        if not self.sources:
            raise TrainingError("no data sources")
        self.train_pool, self.eval_pool = split_episodes(self.sources, config.eval_fraction, config.seed)
        self.fsdp = config.parallel == "fsdp" or (config.parallel == "auto" and bundle.opened is not None)
        if config.parallel == "none" and self.ctx.world_size > 1:
            raise TrainingError("parallel: none, but started with several processes")
        freeze_parameters(bundle.model, config.freeze)
        self.module = self._build_module()
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameter")
        self.trainable_params = sum(p.numel() for p in params)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.encoder = ExampleEncoder(self._policy(), self.sources, config.action_frame_size, config.tom_frame_size)
        self.codec = ActionCodec(self.tokenizer.base_vocab_size)
        self.coordinate_ids = coordinate_token_ids(self.tokenizer)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.autocast = self.device.type == "cuda" and config.precision == "bf16"

    # -- setup ---------------------------------------------------------------------------
    def _build_module(self) -> nn.Module:
        config, bundle = self.config, self.bundle
        model: nn.Module = bundle.model
        if config.lora is not None:
            if bundle.opened is not None:
                raise TrainingError("LoRA loads the base weights first: use parallel ddp/none with --lora")
            model = apply_lora(bundle.model, config.lora)
        if config.gradient_checkpointing:
            apply_activation_checkpointing(bundle.model)
        wrapper = TrainingModule(model)
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh

            if not self.ctx.distributed:
                raise TrainingError("FSDP needs a process group: start with torchrun (or use parallel: none)")
            mesh = init_device_mesh(self.device.type, (self.ctx.world_size,))
            apply_fsdp(wrapper, bundle.model, mesh, bf16=config.precision == "bf16")
            if bundle.opened is not None:   # meta build: allocate the local shards, then read the weights
                wrapper.to_empty(device=self.device)
                bundle.opened.load_weights(model=wrapper, dtype="fp32", device=self.device, requires_grad=True)
                bundle.opened = None
            return wrapper
        if bundle.opened is not None:
            raise TrainingError("a meta-built model needs parallel: fsdp")
        wrapper.to(self.device)
        return apply_ddp(wrapper, self.ctx)

    def _policy(self) -> MagmaPolicy:
        return MagmaPolicy(magma_of(self.module), self.tokenizer, self.bundle.preprocessor,
                           action_frame_size=self.config.action_frame_size)

    # -- one optimizer step ------------------------------------------------------------------
    def _micro_batches(self, step: int) -> list[tuple[list[ExampleRef], list[int]]]:
        cfg, world, rank = self.config, self.ctx.world_size, self.ctx.rank
        refs = sample_refs(self.train_pool, step, cfg.batch_size * world * cfg.grad_accum, cfg.tom_ratio, cfg.seed,
                           cfg.tom_mixing)
        out = []
        for micro in range(cfg.grad_accum):
            start = (micro * world + rank) * cfg.batch_size
            positions = list(range(start, start + cfg.batch_size))
            out.append(([refs[i] for i in positions], positions))
        return out

    def _batch(self, refs: Sequence[ExampleRef], positions: Sequence[int] | None, step: int,
               augment: bool) -> Any:
        encoded = []
        for j, ref in enumerate(refs):
            rng = np.random.default_rng([self.config.seed, step, positions[j], 11]) if positions else None
            encoded.append(self.encoder.encode(ref, self.config.augment if augment else None, rng))
        return collate(encoded, self.tokenizer.pad_id, [r.kind for r in refs]).to(self.device)

    def _forward(self, batch: Any) -> Any:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.module(**batch.model_inputs())

    def train_step(self) -> float:
        """One optimizer step; returns the step's loss (mean over all processes)."""
        cfg = self.config
        self.module.train()
        micro_batches = self._micro_batches(self.step)
        total = torch.zeros((), device=self.device)
        for i, (refs, positions) in enumerate(micro_batches):
            batch = self._batch(refs, positions, self.step, augment=True)
            last = i == len(micro_batches) - 1
            sync = last or not isinstance(self.module, nn.parallel.DistributedDataParallel)
            context = self.module.no_sync() if not sync else contextlib.nullcontext()
            with context:
                out = self._forward(batch)
                loss = out.loss
                if cfg.action_smoothing_bins > 0 or cfg.trace_smoothing_px > 0:
                    loss = smoothed_answer_loss(out.logits, out.targets, out.example_index, len(refs),
                                                self.codec.token_range, cfg.action_smoothing_bins,
                                                self.coordinate_ids, cfg.trace_smoothing_px)
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ctx.distributed:
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
            total /= self.ctx.world_size
        self.step += 1
        self._last_grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        return float(total)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics: loss (all examples), action-token accuracy (teacher forced), and
        from real decoding (the serving path, on ``eval_generate`` examples): per-dimension
        mean absolute error in metric units, gripper accuracy, ToM answer parse rate."""
        cfg = self.config
        refs = eval_refs(self.eval_pool, cfg.eval_max_examples)
        result: dict[str, Any] = {"step": self.step, "kind": "eval", "examples": len(refs)}
        if not refs:
            return result
        self.module.eval()
        losses, correct, scored = [], 0, 0
        by_kind: dict[str, list[float]] = {ACTION: [], TOM: []}
        for start in range(0, len(refs), cfg.batch_size):
            chunk = refs[start:start + cfg.batch_size]
            out = self._forward(self._batch(chunk, None, 0, augment=False))
            per = out.per_example_loss.float().cpu()
            predicted = out.logits.argmax(dim=-1).cpu()
            targets, owners = out.targets.cpu(), out.example_index.cpu()
            for b, ref in enumerate(chunk):
                losses.append(float(per[b]))
                by_kind[ref.kind].append(float(per[b]))
                if ref.kind == ACTION:
                    rows = torch.nonzero(owners == b).flatten()[:ACTION_DIM]
                    correct += int((predicted[rows] == targets[rows]).sum())
                    scored += len(rows)
        result["loss"] = float(np.mean(losses))
        for kind, values in by_kind.items():
            if values:
                result[f"{kind}_loss"] = float(np.mean(values))
        if scored:
            result["action_token_accuracy"] = correct / scored
        if self.ctx.is_main and not self.fsdp and cfg.eval_generate > 0:
            result.update(self._generation_metrics(refs))
        self.module.train()
        return result

    def _generation_metrics(self, refs: Sequence[ExampleRef]) -> dict[str, Any]:
        cfg = self.config
        policy = self._policy()
        out: dict[str, Any] = {}
        actions = [r for r in refs if r.kind == ACTION][:cfg.eval_generate]
        if actions:
            errors, grip_ok = [], 0
            for ref in actions:
                source = self.sources[ref.source]
                record = source.steps[ref.index]
                step = policy.predict_action(record.image, record.instruction)
                decoded = self.codec.decode(step.token_ids, source.statistics)
                errors.append(np.abs(decoded.action[:GRIPPER_DIM] - record.action[:GRIPPER_DIM]))
                grip_ok += int((decoded.gripper > 0.5) == (record.action[GRIPPER_DIM] > 0.5))
            mean = np.mean(errors, axis=0)
            out["action_abs_error"] = {ACTION_DIM_NAMES[i]: float(mean[i]) for i in range(GRIPPER_DIM)}
            out["gripper_accuracy"] = grip_ok / len(actions)
        toms = [r for r in refs if r.kind == TOM][:cfg.eval_generate]
        if toms:
            parsed = 0
            for ref in toms:
                sample = self.sources[ref.source].traces[ref.index]
                text = policy.generate_text(sample.image, sample.question, max_new_tokens=cfg.eval_tom_max_new_tokens,
                                            frame_size=cfg.tom_frame_size).text
                h, w = sample.image.shape[:2]
                parsed += int(parse_traces(text, (w, h)).ok)
            out["tom_parse_rate"] = parsed / len(toms)
        return out

    # -- export / state --------------------------------------------------------------------------
    def statistics_json(self) -> dict[str, Any]:
        stats = dict(self.bundle.base_statistics or {})
        for source in self.sources:
            stats[source.name] = dict(source.statistics_entry) or {
                "action": {"q01": list(source.statistics.q01), "q99": list(source.statistics.q99)}}
        return stats

    def _export_tensors(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
            return {checkpoint_name(k.removeprefix("model.")): v for k, v in full.items()}
        if self.config.lora is not None:
            return lora_merged_tensors(unwrap(self.module))
        return {checkpoint_name(k): p.detach() for k, p in magma_of(self.module).named_parameters()}

    def _model_from_tensors(self, tensors: Mapping[str, torch.Tensor]) -> MagmaForCausalLM:
        """A plain model whose parameters are ``tensors`` (shared, not copied)."""
        source = magma_of(self.module)
        with torch.device("meta"):
            model = MagmaForCausalLM(source.config, source.vision_spec)
        for name, _ in list(model.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._parameters[leaf] = nn.Parameter(tensors[name].to("cpu"), requires_grad=False)
        return model

    def export(self, directory: Path, model: MagmaForCausalLM | None = None) -> Path:
        """Write a runtime checkpoint (+ model card) of the current weights (rank 0 writes)."""
        tensors = None if model is not None else self._export_tensors()
        if not self.ctx.is_main:
            return directory
        if model is None:
            model = self._model_from_tensors(tensors)
        save_checkpoint(model, self.tokenizer, directory, preprocessor=self.bundle.preprocessor,
                        dataset_statistics=self.statistics_json())
        (directory / CARD_FILE).write_text(self.model_card(), encoding="utf-8")
        return directory

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu").clone() for n, p in unwrap(self.module).named_parameters() if p.requires_grad}

    def save(self) -> Path:
        """A resumable checkpoint at the current step: runtime export + trainer_state.pt."""
        directory = self.out / CHECKPOINTS_DIR / step_dir_name(self.step)
        self.export(directory)
        if self.fsdp:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory / "fsdp_state"))
        if self.ctx.is_main:
            state = {"step": self.step, "optimizer": None if self.fsdp else self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "history": self.history,
                     "trainable": None if self.fsdp else self._trainable_state(),
                     "config": self.config.to_dict(), "world_size": self.ctx.world_size}
            torch.save(state, directory / STATE_FILE)
            self._prune()
            self.plot()
        self.ctx.barrier()
        return directory

    def _prune(self) -> None:
        runs = sorted((self.out / CHECKPOINTS_DIR).glob("step-*"))
        for old in runs[:-self.config.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load_state(self, directory: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (same configuration)."""
        directory = Path(directory)
        path = directory / STATE_FILE
        if not path.is_file():
            raise TrainingError(f"{directory}: no {STATE_FILE}: not a resumable training checkpoint")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["config"] != self.config.to_dict():
            changed = sorted(k for k in state["config"] if state["config"][k] != self.config.to_dict().get(k))
            raise TrainingError(f"{directory}: was trained with different settings ({', '.join(changed)}); "
                                "resume with the run's train_config.yaml")
        if self.fsdp:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
            loaded = {"model": model_sd, "optim": optim_sd}
            dcp.load(loaded, checkpoint_id=str(directory / "fsdp_state"))
            set_state_dict(self.module, self.optimizer, model_state_dict=loaded["model"],
                           optim_state_dict=loaded["optim"])
        else:
            params = dict(unwrap(self.module).named_parameters())
            with torch.no_grad():
                for name, value in state["trainable"].items():
                    if name not in params:
                        raise TrainingError(f"{directory}: trained parameter {name} is not in this model")
                    params[name].copy_(value.to(params[name].device))
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = list(state["history"])

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, until: int | None = None, progress: bool = True) -> TrainResult:
        """Train from the current step to ``until`` (default: ``config.steps``), evaluating every
        ``eval_every`` and saving every ``save_every`` steps and at the end."""
        cfg = self.config
        end = min(cfg.steps, until if until is not None else cfg.steps)
        result = TrainResult()
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out)
            # the metrics file is this run's history: a fresh start empties it, a resume keeps
            # what happened up to the resumed step (not the lines an interrupted run wrote later)
            with (self.out / METRICS_FILE).open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(h) + "\n" for h in self.history
                              if h.get("kind") == "eval" or h["step"] % cfg.log_every == 0)
        bar = None
        if progress and self.ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        started = time.perf_counter()
        while self.step < end:
            t0 = time.perf_counter()
            loss = self.train_step()
            result.losses.append(loss)
            record = {"step": self.step, "kind": "train", "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                      "grad_norm": self._last_grad_norm, "seconds": time.perf_counter() - t0}
            self.history.append(record)
            if self.ctx.is_main and (self.step % cfg.log_every == 0 or self.step == end):
                self._append_metrics(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                evaluation = self.evaluate()
                self.history.append(evaluation)
                result.evals.append(evaluation)
                if self.ctx.is_main:
                    self._append_metrics(evaluation)
                    if bar is not None:
                        bar.write(_describe_eval(evaluation))
            if self.step % cfg.save_every == 0 or self.step == end:
                result.last_state_dir = self.save()
        if bar is not None:
            bar.close()
        result.steps_done = self.step
        result.seconds = time.perf_counter() - started
        if self.step >= cfg.steps:
            result.final_dir = self.export_final()
        return result

    def export_final(self) -> Path:
        """The final checkpoint (``OUT/model``); LoRA adapters merged with peft's merge_and_unload."""
        directory = self.out / FINAL_DIR
        if self.config.lora is not None and not self.fsdp:
            model = merged_lora_model(unwrap(self.module))
            self.export(directory, model=model)
        else:
            self.export(directory)
        self.ctx.barrier()
        return directory

    def _append_metrics(self, record: Mapping[str, Any]) -> None:
        with (self.out / METRICS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def plot(self) -> Path:
        """Training loss per step and held-out loss per evaluation -> ``loss_curve.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(h["step"], h["loss"]) for h in self.history if h.get("kind") == "train"]
        held = [(h["step"], h["loss"]) for h in self.history if h.get("kind") == "eval" and "loss" in h]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if train:
            ax.plot(*zip(*train, strict=True), label="train", lw=1)
        if held:
            ax.plot(*zip(*held, strict=True), "o-", label="held-out", lw=1.5)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("answer-token cross-entropy")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if train or held:
            ax.legend()
        fig.tight_layout()
        path = self.out / CURVE_FILE
        fig.savefig(path)
        plt.close(fig)
        return path

    def model_card(self) -> str:
        cfg = self.config
        evals = [h for h in self.history if h.get("kind") == "eval"]
        last = evals[-1] if evals else {}
        method = f"LoRA r={cfg.lora.rank} alpha={cfg.lora.alpha:g} (merged)" if cfg.lora else "full fine-tuning"
        lines = [
            "# Magma fine-tuned with magma-ros train", "",
            f"- Base model: `{self.bundle.origin}`",
            f"- Method: {method}",
            f"- Steps: {self.step} of {cfg.steps}; {cfg.batch_size} x {self.ctx.world_size} process(es) x "
            f"{cfg.grad_accum} accumulation = {cfg.batch_size * self.ctx.world_size * cfg.grad_accum} examples/step",
            f"- Optimizer: AdamW lr {cfg.lr:g} (warmup {cfg.warmup_steps}, cosine to x{cfg.min_lr_ratio:g}), "
            f"weight decay {cfg.weight_decay:g}, clip {cfg.max_grad_norm:g}; seed {cfg.seed}",
            f"- Trainable parameters: {self.trainable_params:,}",
            f"- Frozen: {', '.join(cfg.freeze) or 'nothing'}",
            f"- Prompt mix: ToM ratio {cfg.tom_ratio:g} (drawn per {cfg.tom_mixing}); "
            f"action frames resized to {cfg.action_frame_size}",
            "", "## Data", "",
        ]
        for i, source in enumerate(self.sources):
            where = f" ({self.data_dirs[i]})" if i < len(self.data_dirs) else ""
            episodes = len(set(source.step_episodes))
            lines.append(f"- `{source.name}`{where}: {episodes} episodes, {len(source.steps)} steps, "
                         f"{len(source.traces)} ToM samples")
        lines.append(f"- Held-out split: {len(self.eval_pool.actions)} action + {len(self.eval_pool.toms)} ToM "
                     f"examples ({cfg.eval_fraction:g} of the episodes)")
        lines += ["", "## Held-out metrics" + (f" (step {last.get('step')})" if last else ""), ""]
        if not last:
            lines.append("(not evaluated yet)")
        for key, value in last.items():
            if key in ("step", "kind"):
                continue
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v:.4g}" for k, v in value.items())
            elif isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"- {key}: {value}")
        lines += ["", "Statistics for decoding actions: `dataset_statistics.json` "
                  f"({', '.join(sorted(self.statistics_json()))}).", ""]
        return "\n".join(lines)


def _describe_eval(evaluation: Mapping[str, Any]) -> str:
    parts = [f"eval @ {evaluation['step']}: loss {evaluation.get('loss', float('nan')):.4f}"]
    if "action_token_accuracy" in evaluation:
        parts.append(f"token acc {evaluation['action_token_accuracy']:.3f}")
    if "gripper_accuracy" in evaluation:
        parts.append(f"gripper acc {evaluation['gripper_accuracy']:.3f}")
    if "tom_parse_rate" in evaluation:
        parts.append(f"ToM parse {evaluation['tom_parse_rate']:.3f}")
    return ", ".join(parts)


def latest_state(out_dir: str | Path) -> Path | None:
    """The newest resumable checkpoint under ``OUT/checkpoints`` (None when there is none)."""
    runs = sorted(p for p in (Path(out_dir) / CHECKPOINTS_DIR).glob("step-*") if (p / STATE_FILE).is_file())
    return runs[-1] if runs else None


def run_training(config: TrainConfig, data_dirs: Sequence[str | Path], out_dir: str | Path,
                 checkpoint: str | Path | None = None, init: str | None = None, resume: str | None = None,
                 ctx: DistContext | None = None, progress: bool = True, until: int | None = None) -> TrainResult:
    """What ``magma-ros train`` runs in each process: data, model, trainer, (resume), fit."""
    ctx = ctx or DistContext()
    torch.manual_seed(config.seed)
    sources = load_sources(data_dirs)
    meta = checkpoint is not None and (config.parallel == "fsdp")
    bundle = load_base(checkpoint, init, config, ctx.device, meta=meta)
    if config.statistics_from == "checkpoint":
        sources = with_checkpoint_statistics(sources, bundle)
    trainer = Trainer(config, bundle, sources, out_dir, ctx, data_dirs=[str(d) for d in data_dirs])
    if resume:
        state = latest_state(out_dir) if resume == "auto" else Path(resume)
        if state is not None:
            trainer.load_state(state)
    return trainer.fit(until=until, progress=progress)
