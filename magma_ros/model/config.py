"""Typed, self-validating views of a Magma checkpoint's configuration files.

``config.json`` of a published Magma checkpoint is *flat*: every LLaMA text field sits at
the top level and again under ``text_config``; the vision settings are a plain dict under
``vision_config``. Top-level ``bos/eos/pad_token_id`` may be ``null``. :class:`MagmaConfig`
reads that layout (``text_config`` wins, the top level fills gaps) and writes it back.
``preprocessor_config.json`` becomes :class:`PreprocessorConfig`.

Every validation error is a :class:`~magma_ros.model.errors.ConfigError` whose message
names the file and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from magma_ros.model.errors import ConfigError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Magma-8B's preprocessor value; used only when preprocessor_config.json lacks it.
DEFAULT_NUM_CROPS = 4
# The vision tower's output stride: a crop of S pixels gives an (S/32) x (S/32) feature grid.
VISION_STRIDE = 32
ANYRES_STRATEGIES = ("crop", "global")
VISION_FEATURE_LAYERS = ("clip_vis_dense",)

# LLaMA fields that config.json repeats at the top level (written back by to_dict()).
_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "attention_bias", "mlp_bias", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
)


def read_json(path: Path, what: str = "file") -> dict[str, Any]:
    """Read a JSON object from ``path``; raise ConfigError naming the file when unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: {what} not found") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: {what} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must hold a JSON object, found {type(data).__name__}")
    return data


def _check_int(value: object, name: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_float(value: object, name: str, source: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{source}: {name} must be > 0, got {value!r}")
    return float(value)


def _check_bool(value: object, name: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    return value


def _optional_token_id(value: object, name: str, source: str) -> int | None:
    if value is None:
        return None
    return _check_int(value, name, source, minimum=0)


def projector_depth(projector_type: str, source: str = "config.json") -> int:
    """Number of Linear layers of a projector type: ``"mlpNx_gelu"`` -> N, ``"linear"`` -> 1."""
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(
            f"{source}: mm_projector_type {projector_type!r} is not supported "
            "(expected 'mlp<N>x_gelu' or 'linear')"
        )
    return int(match.group(1))


@dataclass(frozen=True)
class TextConfig:
    """The LLaMA language model's settings (``text_config``, with top-level fallbacks).

    ``vocab_size`` is the *embedding* size, which may exceed the tokenizer's size
    (padded vocabulary); the action-token range never derives from it.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: Mapping[str, Any] | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    source: str = field(default="config.json", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            _check_int(getattr(self, name), f"text_config.{name}", src)
        if self.head_dim is not None:
            _check_int(self.head_dim, "text_config.head_dim", src)
        elif self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{src}: text_config.hidden_size ({self.hidden_size}) is not divisible by "
                f"text_config.num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{src}: text_config.num_attention_heads ({self.num_attention_heads}) is not divisible "
                f"by text_config.num_key_value_heads ({self.num_key_value_heads})"
            )
        _check_float(self.rms_norm_eps, "text_config.rms_norm_eps", src)
        _check_float(self.rope_theta, "text_config.rope_theta", src)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Mapping):
            raise ConfigError(f"{src}: text_config.rope_scaling must be an object or null")
        if self.hidden_act != "silu":
            raise ConfigError(f"{src}: text_config.hidden_act {self.hidden_act!r} is not supported (silu)")
        for name in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
            _check_bool(getattr(self, name), f"text_config.{name}", src)
        for name in ("bos_token_id", "pad_token_id"):
            _optional_token_id(getattr(self, name), f"text_config.{name}", src)
        for tok in self.eos_token_id:
            _check_int(tok, "text_config.eos_token_id", src, minimum=0)

    @classmethod
    def from_mappings(cls, primary: Mapping[str, Any], fallback: Mapping[str, Any],
                      source: str = "config.json") -> TextConfig:
        """Build from ``text_config`` (``primary``) with the flat top level as ``fallback``."""

        def get(name: str, default: Any = None) -> Any:
            value = primary.get(name)
            if value is None:
                value = fallback.get(name)
            return default if value is None else value

        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        for name in required:
            if get(name) is None:
                raise ConfigError(f"{source}: text_config.{name} is missing (neither in text_config "
                                  "nor at the top level)")
        rope_theta = get("rope_theta")
        rope_scaling = get("rope_scaling")
        rope_parameters = get("rope_parameters")  # transformers v5 spelling
        if isinstance(rope_parameters, Mapping):
            rope_theta = rope_parameters.get("rope_theta", rope_theta)
            if rope_parameters.get("rope_type", "default") != "default":
                rope_scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
        eos = get("eos_token_id")
        if eos is None:
            eos_ids: tuple[int, ...] = ()
        elif isinstance(eos, list):
            eos_ids = tuple(eos)
        else:
            eos_ids = (eos,)
        return cls(
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"),
            num_hidden_layers=get("num_hidden_layers"),
            num_attention_heads=get("num_attention_heads"),
            num_key_value_heads=get("num_key_value_heads", get("num_attention_heads")),
            max_position_embeddings=get("max_position_embeddings", 8192),
            rms_norm_eps=get("rms_norm_eps", 1e-5),
            rope_theta=rope_theta if rope_theta is not None else 10000.0,
            rope_scaling=rope_scaling,
            head_dim=get("head_dim"),
            hidden_act=get("hidden_act", "silu"),
            attention_bias=get("attention_bias", False),
            mlp_bias=get("mlp_bias", False),
            tie_word_embeddings=get("tie_word_embeddings", False),
            bos_token_id=get("bos_token_id"),
            eos_token_id=eos_ids,
            pad_token_id=get("pad_token_id"),
            initializer_range=get("initializer_range", 0.02),
            source=source,
        )

    def to_llama_config(self) -> Any:
        """The equivalent ``transformers.LlamaConfig`` (stock class, no remote code)."""
        from transformers import LlamaConfig

        kwargs: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": self.hidden_act,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if len(self.eos_token_id) > 1 else
            (self.eos_token_id[0] if self.eos_token_id else None),
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "head_dim": self.head_dim,
        }
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope.update(self.rope_scaling)
            rope["rope_type"] = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            rope.pop("type", None)
        kwargs["rope_parameters"] = rope
        try:
            return LlamaConfig(**kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"{self.source}: text_config is not a valid LLaMA config: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """The fields as written in config.json (``eos_token_id`` an int when single)."""
        out: dict[str, Any] = {}
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if name == "eos_token_id":
                value = None if not value else (value[0] if len(value) == 1 else list(value))
            elif name == "rope_scaling" and value is not None:
                value = dict(value)
            out[name] = value
        return out


@dataclass(frozen=True)
class VisionConfig:
    """Vision tower and projector settings (config.json ``vision_config``).

    ``img_size`` is the crop size S in pixels; each crop yields an (S/32) x (S/32) grid.
    ``mm_hidden_size`` (the tower's output channels) may be None: it is then taken from
    the checkpoint's tensor shapes.
    """

    vision_backbone: str
    img_size: int
    vision_feature_layer: str = "clip_vis_dense"
    img_anyres_strategy: str = "crop"
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int | None = None
    mm_use_im_start_end: bool = False
    mm_use_row_seperator: bool = True
    source: str = field(default="config.json", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        if not isinstance(self.vision_backbone, str) or "convnext" not in self.vision_backbone:
            raise ConfigError(f"{src}: vision_config.vision_backbone must name a ConvNeXt backbone "
                              f"(e.g. 'convnextxxlarge'), got {self.vision_backbone!r}")
        _check_int(self.img_size, "vision_config.img_size", src)
        if self.img_size % VISION_STRIDE:
            raise ConfigError(f"{src}: vision_config.img_size ({self.img_size}) must be a multiple "
                              f"of {VISION_STRIDE}")
        if self.vision_feature_layer not in VISION_FEATURE_LAYERS:
            raise ConfigError(f"{src}: vision_config.vision_feature_layer {self.vision_feature_layer!r} "
                              f"is not supported (expected one of {VISION_FEATURE_LAYERS})")
        if self.img_anyres_strategy not in ANYRES_STRATEGIES:
            raise ConfigError(f"{src}: vision_config.img_anyres_strategy {self.img_anyres_strategy!r} "
                              f"is not supported (expected one of {ANYRES_STRATEGIES})")
        projector_depth(self.mm_projector_type, f"{src}: vision_config")
        if self.mm_hidden_size is not None:
            _check_int(self.mm_hidden_size, "vision_config.mm_hidden_size", src)
        _check_bool(self.mm_use_im_start_end, "vision_config.mm_use_im_start_end", src)
        _check_bool(self.mm_use_row_seperator, "vision_config.mm_use_row_seperator", src)

    @property
    def grid(self) -> int:
        """Feature-grid side per crop: ``img_size / 32``."""
        return self.img_size // VISION_STRIDE

    @classmethod
    def from_mappings(cls, vision: Mapping[str, Any], top: Mapping[str, Any],
                      source: str = "config.json") -> VisionConfig:
        """Build from ``vision_config`` with the flat top level as fallback."""

        def get(name: str, default: Any = None) -> Any:
            value = vision.get(name)
            if value is None:
                value = top.get(name)
            return default if value is None else value

        if get("vision_backbone") is None:
            raise ConfigError(f"{source}: vision_config.vision_backbone is missing")
        if get("img_size") is None:
            raise ConfigError(f"{source}: vision_config.img_size is missing (neither in vision_config "
                              "nor at the top level)")
        return cls(
            vision_backbone=get("vision_backbone"),
            img_size=get("img_size"),
            vision_feature_layer=get("vision_feature_layer", "clip_vis_dense"),
            img_anyres_strategy=get("img_anyres_strategy", "crop"),
            mm_projector_type=get("mm_projector_type", "mlp2x_gelu"),
            mm_hidden_size=get("mm_hidden_size"),
            mm_use_im_start_end=get("mm_use_im_start_end", False),
            mm_use_row_seperator=get("mm_use_row_seperator", True),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision_backbone": self.vision_backbone,
            "vision_feature_layer": self.vision_feature_layer,
            "img_anyres_strategy": self.img_anyres_strategy,
            "img_size": self.img_size,
            "mm_projector_type": self.mm_projector_type,
            "mm_hidden_size": self.mm_hidden_size,
            "mm_use_im_start_end": self.mm_use_im_start_end,
            "mm_use_row_seperator": self.mm_use_row_seperator,
        }


@dataclass(frozen=True)
class MagmaConfig:
    """A whole ``config.json``: text + vision settings and the image token id.

    ``mm_use_image_start_end`` (top-level, default false) makes prompts wrap ``<image>`` as
    ``<image_start><image><image_end>`` (the reference's prompt switch; distinct from
    ``vision_config.mm_use_im_start_end``, which only adds projector separator parameters).
    ``extra`` keeps top-level fields we do not interpret (``architectures``, ``auto_map``,
    ``torch_dtype``...) so :meth:`to_dict` can write them back unchanged.
    """

    text: TextConfig
    vision: VisionConfig
    image_token_index: int
    tokenizer_model_max_length: int | None = None
    mm_use_image_start_end: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    source: str = field(default="config.json", compare=False)

    def __post_init__(self) -> None:
        _check_int(self.image_token_index, "image_token_index", self.source, minimum=0)
        _check_bool(self.mm_use_image_start_end, "mm_use_image_start_end", self.source)
        if self.tokenizer_model_max_length is not None:
            _check_int(self.tokenizer_model_max_length, "tokenizer_model_max_length", self.source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config.json") -> MagmaConfig:
        """Parse the flat Magma layout; raise ConfigError naming the field on any problem."""
        vision = data.get("vision_config")
        if vision is None:
            raise ConfigError(f"{source}: vision_config is missing; this is not a Magma config "
                              "(model_type 'magma' has a vision_config object)")
        if not isinstance(vision, Mapping):
            raise ConfigError(f"{source}: vision_config must be an object, got {type(vision).__name__}")
        text = data.get("text_config") or {}
        if not isinstance(text, Mapping):
            raise ConfigError(f"{source}: text_config must be an object, got {type(text).__name__}")
        if data.get("image_token_index") is None:
            raise ConfigError(f"{source}: image_token_index is missing")
        known = set(_TEXT_FIELDS) | {"text_config", "vision_config", "image_token_index",
                                     "tokenizer_model_max_length", "img_size", "mm_hidden_size",
                                     "mm_projector_type", "mm_use_im_start_end", "mm_use_image_start_end"}
        return cls(
            text=TextConfig.from_mappings(text, data, source),
            vision=VisionConfig.from_mappings(vision, data, source),
            image_token_index=data["image_token_index"],
            tokenizer_model_max_length=data.get("tokenizer_model_max_length"),
            mm_use_image_start_end=bool(data.get("mm_use_image_start_end") or False),
            extra={k: v for k, v in data.items() if k not in known},
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> MagmaConfig:
        path = Path(path)
        return cls.from_dict(read_json(path, "config.json"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The published flat layout: LLaMA fields at top level *and* under ``text_config``."""
        text = self.text.to_dict()
        vision = self.vision.to_dict()
        out: dict[str, Any] = {"model_type": "magma"}
        out.update(self.extra)
        for key, value in text.items():
            out.setdefault(key, value)
        out.update({
            "image_token_index": self.image_token_index,
            "img_size": self.vision.img_size,
            "mm_hidden_size": self.vision.mm_hidden_size,
            "mm_projector_type": self.vision.mm_projector_type,
            "mm_use_im_start_end": self.vision.mm_use_im_start_end,
            "tokenizer_model_max_length": self.tokenizer_model_max_length,
            "mm_use_image_start_end": self.mm_use_image_start_end,
            "text_config": {"model_type": "llama", **text},
            "vision_config": vision,
        })
        return out

    def with_mm_hidden_size(self, mm_hidden_size: int) -> MagmaConfig:
        """A copy with ``vision.mm_hidden_size`` set (used once the tower size is known)."""
        return replace(self, vision=replace(self.vision, mm_hidden_size=mm_hidden_size))

    def with_token_ids(self, bos: int | None, eos: int | None, pad: int | None) -> MagmaConfig:
        """A copy whose missing (null) text bos/eos/pad ids are filled from the tokenizer."""
        text = self.text
        return replace(self, text=replace(
            text,
            bos_token_id=text.bos_token_id if text.bos_token_id is not None else bos,
            eos_token_id=text.eos_token_id or ((eos,) if eos is not None else ()),
            pad_token_id=text.pad_token_id if text.pad_token_id is not None else pad,
        ))


@dataclass(frozen=True)
class PreprocessorConfig:
    """Image preprocessing settings (``preprocessor_config.json``, MagmaImageProcessor fields).

    ``base_img_size`` is the crop size S; ``num_crops`` bounds rows*cols of the crop grid.
    ``action_regions`` (this package's addition, absent from Microsoft's files): boxes
    ``(x0, y0, x1, y1)``, fractions of the action frame, that robot action queries also give the
    model as images of their own, after the whole frame (e.g. the sim's wrist inset, which the
    whole frame's 8x8 feature grid covers with only 3x3 cells). Empty: one image, as Magma does.
    """

    base_img_size: int
    num_crops: int = DEFAULT_NUM_CROPS
    anyres_strategy: str = "crop"
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    do_convert_rgb: bool = True
    action_regions: tuple[tuple[float, float, float, float], ...] = ()
    source: str = field(default="preprocessor_config.json", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        _check_int(self.base_img_size, "base_img_size", src)
        if self.base_img_size % VISION_STRIDE:
            raise ConfigError(f"{src}: base_img_size ({self.base_img_size}) must be a multiple of "
                              f"{VISION_STRIDE}")
        _check_int(self.num_crops, "num_crops", src)
        if self.anyres_strategy not in ANYRES_STRATEGIES:
            raise ConfigError(f"{src}: anyres_strategy {self.anyres_strategy!r} is not supported "
                              f"(expected one of {ANYRES_STRATEGIES})")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ConfigError(f"{src}: {name} must have 3 values, got {list(value)!r}")
            for v in value:
                _check_float(v, name, src, positive=(name == "image_std"))
        _check_bool(self.do_convert_rgb, "do_convert_rgb", src)
        check_regions(self.action_regions, f"{src}: action_regions")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_size: int,
                  source: str = "preprocessor_config.json") -> PreprocessorConfig:
        """Parse MagmaImageProcessor fields; ``default_size`` fills a missing base_img_size."""
        size = data.get("base_img_size")
        if size is None and isinstance(data.get("crop_size"), Mapping):
            size = data["crop_size"].get("height")
        mean = data.get("image_mean", CLIP_MEAN)
        std = data.get("image_std", CLIP_STD)
        if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
            raise ConfigError(f"{source}: image_mean and image_std must be lists of 3 numbers")
        return cls(
            base_img_size=default_size if size is None else size,
            num_crops=data.get("num_crops", DEFAULT_NUM_CROPS),
            anyres_strategy=data.get("anyres_strategy", "crop"),
            image_mean=tuple(mean),  # type: ignore[arg-type]
            image_std=tuple(std),  # type: ignore[arg-type]
            do_convert_rgb=data.get("do_convert_rgb", True),
            action_regions=as_regions(data.get("action_regions", ()), f"{source}: action_regions"),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "MagmaImageProcessor",
            "processor_class": "MagmaProcessor",
            "anyres_strategy": self.anyres_strategy,
            "base_img_size": self.base_img_size,
            "num_crops": self.num_crops,
            "do_convert_rgb": self.do_convert_rgb,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            **({"action_regions": [list(r) for r in self.action_regions]} if self.action_regions else {}),
        }


def as_regions(value: object, what: str) -> tuple[tuple[float, float, float, float], ...]:
    """A list of ``[x0, y0, x1, y1]`` boxes (JSON / YAML) as a tuple of tuples, checked."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(box, (list, tuple)) for box in value):
        raise ConfigError(f"{what} must be a list of [x0, y0, x1, y1] boxes, got {value!r}")
    regions = tuple(tuple(box) for box in value)
    check_regions(regions, what)
    return regions   # type: ignore[return-value]


def check_regions(regions: object, what: str) -> None:
    """Each box is 4 finite fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1."""
    if not isinstance(regions, tuple):
        raise ConfigError(f"{what} must be a tuple of boxes, got {regions!r}")
    for box in regions:
        if (not isinstance(box, tuple) or len(box) != 4
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box)):
            raise ConfigError(f"{what}: {box!r} is not 4 numbers (x0, y0, x1, y1)")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ConfigError(f"{what}: {list(box)} needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                              "(fractions of the frame)")
