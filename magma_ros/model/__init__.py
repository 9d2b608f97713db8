"""Magma vision-language-action model core (ROS-free).

Load a published Magma checkpoint directory with stock libraries (transformers
``LlamaForCausalLM``, timm ConvNeXt, tokenizers, our safetensors reader), preprocess
frames and prompts exactly like the reference implementation, and run fast KV-cached
decoding: the 7-token constrained action path and free text for mark/trace queries.

Entry point: :class:`MagmaPolicy` (``from_pretrained(dir)``, ``predict_action``,
``generate_text``). Toy-size models for tests: :func:`build_tiny_model` +
:func:`save_checkpoint`; :func:`write_magma8b_layout_fixture` writes Magma-8B's exact
layout at tiny sizes.
"""

from magma_ros.model.config import (
    CLIP_MEAN,
    CLIP_STD,
    MagmaConfig,
    PreprocessorConfig,
    TextConfig,
    VisionConfig,
)
from magma_ros.model.errors import (
    CheckpointError,
    ConfigError,
    GenerationError,
    ImageError,
    MagmaModelError,
    TokenizerError,
)
from magma_ros.model.fixtures import LayoutFixture, write_large_checkpoint, write_magma8b_layout_fixture
from magma_ros.model.generation import (
    ACTION_DIMS,
    GREEDY,
    REFERENCE_SAMPLING,
    DecodeResult,
    Sampling,
    StageTimings,
    decode_constrained,
    decode_text,
)
from magma_ros.model.loading import LoadedCheckpoint, LoadReport, load_checkpoint, resolve_dtype
from magma_ros.model.modeling import MagmaForCausalLM, num_image_tokens, tile_crop_features
from magma_ros.model.policy import ActionStep, MagmaPolicy, PreparedInputs, TextResult
from magma_ros.model.processor import (
    SYSTEM_MESSAGE,
    MagmaImageProcessor,
    ProcessedImage,
    PromptBuilder,
    region_crops,
    render_chat,
    robot_action_query,
    select_crop_grid,
)
from magma_ros.model.projector import MagmaProjector
from magma_ros.model.saving import save_checkpoint
from magma_ros.model.tiny import TINY_VARIANTS, TinyVariant, build_tiny_model, build_tiny_tokenizer
from magma_ros.model.tokenizer import ACTION_BINS, ActionTokenRange, MagmaTokenizer
from magma_ros.model.vision import VISION_BACKBONES, ConvNeXtSpec, MagmaVisionTower, infer_convnext_spec

__all__ = [
    "ACTION_BINS",
    "ACTION_DIMS",
    "CLIP_MEAN",
    "CLIP_STD",
    "GREEDY",
    "REFERENCE_SAMPLING",
    "SYSTEM_MESSAGE",
    "TINY_VARIANTS",
    "VISION_BACKBONES",
    "ActionStep",
    "ActionTokenRange",
    "CheckpointError",
    "ConfigError",
    "ConvNeXtSpec",
    "DecodeResult",
    "GenerationError",
    "ImageError",
    "LayoutFixture",
    "LoadReport",
    "LoadedCheckpoint",
    "MagmaConfig",
    "MagmaForCausalLM",
    "MagmaImageProcessor",
    "MagmaModelError",
    "MagmaPolicy",
    "MagmaProjector",
    "MagmaTokenizer",
    "MagmaVisionTower",
    "PreparedInputs",
    "PreprocessorConfig",
    "ProcessedImage",
    "PromptBuilder",
    "Sampling",
    "StageTimings",
    "TextConfig",
    "TextResult",
    "TinyVariant",
    "TokenizerError",
    "VisionConfig",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "decode_constrained",
    "decode_text",
    "infer_convnext_spec",
    "load_checkpoint",
    "num_image_tokens",
    "region_crops",
    "render_chat",
    "resolve_dtype",
    "robot_action_query",
    "save_checkpoint",
    "select_crop_grid",
    "tile_crop_features",
    "write_large_checkpoint",
    "write_magma8b_layout_fixture",
]
