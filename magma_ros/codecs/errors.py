"""Errors raised by the codecs.

Parsers of model text never raise (they return what parsed plus error descriptions);
these errors are for programming and configuration mistakes: a bad image, a malformed
statistics file, token ids outside the action range passed to a strict function.
"""

from __future__ import annotations

__all__ = ["CodecError", "StatisticsError"]


class CodecError(ValueError):
    """Root of every error raised by ``magma_ros.codecs``."""


class StatisticsError(CodecError):
    """An action statistics set or ``dataset_statistics.json`` is missing or malformed."""
