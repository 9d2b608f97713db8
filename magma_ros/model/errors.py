"""The model core's error hierarchy: one root, a few specific kinds.

Every message names the file, field or tensor that is wrong, so a user pointing us at
a damaged or unusual checkpoint directory learns what to fix without a debugger.
"""

from __future__ import annotations


class MagmaModelError(Exception):
    """Root of every error raised by :mod:`magma_ros.model`."""


class ConfigError(MagmaModelError, ValueError):
    """A configuration value (config.json, preprocessor_config.json, an option) is invalid."""


class CheckpointError(MagmaModelError):
    """A checkpoint directory is incomplete or damaged: missing file or shard, corrupt or
    truncated safetensors, missing / unexpected parameters, shape mismatch."""


class TokenizerError(CheckpointError):
    """The checkpoint's tokenizer files are missing, unreadable or lack a required token."""


class ImageError(MagmaModelError, ValueError):
    """An input image cannot be processed (wrong rank, channel count, dtype or zero size)."""


class GenerationError(MagmaModelError, ValueError):
    """Generation was asked for something impossible (bad sampling value, no image token...)."""
