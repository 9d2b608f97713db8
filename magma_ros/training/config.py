"""The fine-tuning configuration: typed, validated, read from a recipe YAML and saved beside
every run (``train_config.yaml`` in the output directory), so a run can be repeated exactly.

A recipe (``training/*.yaml``) holds any subset of :class:`TrainConfig`'s fields; ``lora`` and
``augment`` are nested mappings. Unknown keys, wrong types and out-of-range values are a
:class:`TrainConfigError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magma_ros.model.config import as_regions, check_regions
from magma_ros.model.errors import ConfigError

CONFIG_FILE = "train_config.yaml"

PRECISIONS = ("fp32", "bf16")
TOM_MIXING = ("example", "step")  # ToM vs action prompt drawn per example or per optimizer step
STATISTICS_FROM = ("data", "checkpoint")  # which action statistics encode the training actions
PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainConfigError(ValueError):
    """A training configuration is invalid; the message names the source and the field."""


def _fail(source: str, name: str, message: str) -> TrainConfigError:
    return TrainConfigError(f"{source}: {name}: {message}")


def _check(value: Any, kind: type | tuple[type, ...], name: str, source: str) -> Any:
    if isinstance(value, bool) and kind is not bool and (kind is int or kind is float or kind == (int, float)):
        raise _fail(source, name, f"expected a number, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(source, name, f"expected {want}, got {value!r}")
    return value


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (peft) on the language model's linear layers. ``train_projector`` also trains the
    vision->text projector in full (small, and the part most specific to a new camera)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    train_projector: bool = True

    def validate(self, source: str) -> None:
        if self.rank < 1:
            raise _fail(source, "lora.rank", f"must be >= 1, got {self.rank}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise _fail(source, "lora.alpha", f"must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise _fail(source, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise _fail(source, "lora.target_modules", "must be a non-empty list of module names")


@dataclass(frozen=True)
class AugmentConfig:
    """Image augmentation of training frames (never of held-out ones). ``crop_scale``: a random
    crop keeps this fraction of each side at least (1 = no crop), then is resized back;
    ``brightness`` / ``contrast`` / ``saturation``: colour jitter factors drawn from
    ``[1 - x, 1 + x]``."""

    enabled: bool = False
    crop_scale: float = 0.9
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def validate(self, source: str) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise _fail(source, "augment.crop_scale", f"must be in (0, 1], got {self.crop_scale}")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise _fail(source, f"augment.{name}", f"must be in [0, 1), got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a fine-tuning run.

    Batches: ``batch_size`` examples per process per micro-step; one optimizer step sees
    ``batch_size * world_size * grad_accum`` examples. Each example is a ToM prompt with
    probability ``tom_ratio`` (when the data has Trace-of-Mark labels), else an action prompt;
    with ``tom_mixing: step`` the draw is made once per optimizer step instead, so a batch is all
    action or all ToM prompts (ToM answers are ~3x longer: mixed batches pad every action example
    to the ToM length: on CPU an action example cost ~2x more in a mixed batch). Examples are drawn
    with replacement by a generator seeded with (seed, step), so a run is reproducible,
    resumable at any step and splits the same way over any number of processes.
    Schedule: linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``lr * min_lr_ratio``.
    Held-out split: ``eval_fraction`` of the episodes (at least one when there are two or more).
    Frozen parameters: ``freeze`` lists module prefixes of the Magma model (``vision_tower``,
    ``multi_modal_projector``, ``language_model``...) whose weights stay as loaded, e.g. a vision
    tower pretrained by ``training/recipes/pretrain_vision.py``.
    Action loss: ``action_smoothing_bins`` = 0 scores each action token by plain cross-entropy
    (Magma's); > 0 scores it against a Gaussian over the neighbouring bins with that standard
    deviation (in bins), so a prediction one bin off costs less than one at the far end of the
    range (:func:`magma_ros.training.losses.smoothed_answer_loss`). Held-out losses stay plain.
    Trace loss: ``trace_smoothing_px`` > 0 does the same for the coordinates of Trace-of-Mark
    answers (integers on the 256 grid), with that standard deviation in pixels of the grid. On
    magma-tiny it made traces worse at 1.5 and 4 px (training/recipes/README.md, attempt 8).
    Action statistics: ``statistics_from`` = ``data`` (the default) encodes each dataset's actions
    with the statistics computed from that dataset; ``checkpoint`` with the starting checkpoint's
    statistics of the same name (actions beyond its q01..q99 fall in the edge bins), so a fine-tune
    on new recordings keeps what every action token of the checkpoint means.
    Action images: ``action_regions`` (boxes ``[x0, y0, x1, y1]``, fractions of the action frame)
    sets the preprocessor's regions that action prompts also give the model as images of their
    own (the trained checkpoint keeps them, so the policy serves what was trained); null keeps
    the starting checkpoint's, [] removes them.
    """

    seed: int = 0
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    tom_ratio: float = 0.0
    tom_mixing: str = "example"
    freeze: tuple[str, ...] = ()
    action_smoothing_bins: float = 0.0
    trace_smoothing_px: float = 0.0
    statistics_from: str = "data"
    action_frame_size: int = 256
    action_regions: tuple[tuple[float, float, float, float], ...] | None = None
    tom_frame_size: int | None = None
    precision: str = "bf16"
    weights_dtype: str = "fp32"
    gradient_checkpointing: bool = False
    parallel: str = "auto"
    lora: LoraConfig | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_fraction: float = 0.1
    eval_every: int = 100
    eval_max_examples: int = 64
    eval_generate: int = 16
    eval_tom_max_new_tokens: int = 192
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        self.validate("config")

    def validate(self, source: str) -> None:
        positive = ("steps", "batch_size", "grad_accum", "action_frame_size", "eval_every", "eval_max_examples",
                    "eval_tom_max_new_tokens", "save_every", "keep_last", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(source, name, f"must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_generate", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _fail(source, name, f"must be an integer >= 0, got {value!r}")
        if self.action_regions is not None:
            try:
                check_regions(self.action_regions, f"{source}: action_regions")
            except ConfigError as err:
                raise TrainConfigError(str(err)) from err
        if self.tom_frame_size is not None and (not isinstance(self.tom_frame_size, int) or self.tom_frame_size < 1):
            raise _fail(source, "tom_frame_size", f"must be an integer >= 1 or null, got {self.tom_frame_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise _fail(source, "lr", f"must be > 0, got {self.lr}")
        for name, lo, hi in (("min_lr_ratio", 0.0, 1.0), ("tom_ratio", 0.0, 1.0), ("eval_fraction", 0.0, 0.9)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise _fail(source, name, f"must be in [{lo}, {hi}], got {value}")
        if self.tom_mixing not in TOM_MIXING:
            raise _fail(source, "tom_mixing", f"must be one of {TOM_MIXING}, got {self.tom_mixing!r}")
        if not (math.isfinite(self.action_smoothing_bins) and 0.0 <= self.action_smoothing_bins <= 64.0):
            raise _fail(source, "action_smoothing_bins", f"must be in [0, 64] bins, got {self.action_smoothing_bins}")
        if not (math.isfinite(self.trace_smoothing_px) and 0.0 <= self.trace_smoothing_px <= 64.0):
            raise _fail(source, "trace_smoothing_px", f"must be in [0, 64] px, got {self.trace_smoothing_px}")
        if self.statistics_from not in STATISTICS_FROM:
            raise _fail(source, "statistics_from", f"must be one of {STATISTICS_FROM}, got {self.statistics_from!r}")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise _fail(source, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise _fail(source, "betas", f"must be two numbers in [0, 1), got {self.betas}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise _fail(source, "max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        if self.precision not in PRECISIONS:
            raise _fail(source, "precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        if self.weights_dtype not in PRECISIONS:
            raise _fail(source, "weights_dtype", f"must be one of {PRECISIONS}, got {self.weights_dtype!r}")
        if self.weights_dtype == "bf16" and self.lora is None:
            raise _fail(source, "weights_dtype", "bf16 weights are for LoRA (frozen base); full fine-tuning "
                                                 "keeps fp32 master weights (precision: bf16 autocasts)")
        if self.parallel not in PARALLEL_MODES:
            raise _fail(source, "parallel", f"must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.lora is not None:
            self.lora.validate(source)
        self.augment.validate(source)

    # -- (de)serialization ------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(data, Mapping):
            raise TrainConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TrainConfigError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name == "lora":
                values[name] = None if value in (None, False) else _nested(LoraConfig, value, "lora", source)
            elif name == "augment":
                values[name] = _nested(AugmentConfig, value, "augment", source)
            elif name == "freeze":
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                    raise _fail(source, name, f"expected a list of module prefixes, got {value!r}")
                values[name] = tuple(value)
            elif name == "action_regions":
                try:
                    values[name] = None if value is None else as_regions(value, f"{source}: action_regions")
                except ConfigError as err:
                    raise TrainConfigError(str(err)) from err
            elif name == "betas":
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise _fail(source, name, f"expected two numbers, got {value!r}")
                values[name] = tuple(_check(v, (int, float), name, source) * 1.0 for v in value)
            else:
                values[name] = _coerce(known[name].type, value, name, source)
        try:
            config = cls(**values)
        except TrainConfigError as err:
            raise TrainConfigError(str(err).replace("config:", f"{source}:", 1)) from err
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise TrainConfigError(f"{path}: cannot read the recipe ({err})") from err
        except yaml.YAMLError as err:
            raise TrainConfigError(f"{path}: not valid YAML ({err})") from err
        return cls.from_dict(data or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["freeze"] = list(self.freeze)
        if self.action_regions is not None:
            out["action_regions"] = [list(box) for box in self.action_regions]
        if self.lora is not None:
            out["lora"]["target_modules"] = list(self.lora.target_modules)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``train_config.yaml`` into ``directory``; returns its path."""
        import yaml

        path = Path(directory) / CONFIG_FILE
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def is_lora(self) -> bool:
        return self.lora is not None


def _coerce(annotation: Any, value: Any, name: str, source: str) -> Any:
    text = str(annotation)
    if "int | None" in text or "Optional[int]" in text:
        return None if value is None else _check(value, int, name, source)
    if text in ("int", "<class 'int'>"):
        return _check(value, int, name, source)
    if text in ("float", "<class 'float'>"):
        return _check(value, (int, float), name, source) * 1.0
    if text in ("bool", "<class 'bool'>"):
        return _check(value, bool, name, source)
    if text in ("str", "<class 'str'>"):
        return _check(value, str, name, source)
    return value


def _nested(kind: type, value: Any, prefix: str, source: str) -> Any:
    if value is True:
        return kind()
    if not isinstance(value, Mapping):
        raise _fail(source, prefix, f"expected a mapping, got {value!r}")
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _fail(source, prefix, f"unknown setting(s) {unknown}; known: {sorted(known)}")
    values = {}
    for name, item in value.items():
        if name == "target_modules":
            if not isinstance(item, (list, tuple)):
                raise _fail(source, f"{prefix}.{name}", f"expected a list of names, got {item!r}")
            values[name] = tuple(_check(t, str, f"{prefix}.{name}", source) for t in item)
        else:
            values[name] = _coerce(known[name].type, item, f"{prefix}.{name}", source)
    return kind(**values)
