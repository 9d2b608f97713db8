"""Backend selection options shared by the policy node, ``magma-ros predict / evaluate /
evaluate-offline`` and the benchmarks: one dataclass, one argparse helper."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from magma_ros.backends.base import BackendError

BACKENDS = ("torch", "onnxruntime", "tensorrt", "none")
EXECUTION_PROVIDERS = ("", "cpu", "cuda", "tensorrt")
PRECISIONS = ("", "fp32", "fp16", "bf16", "int8", "int4")


def engine_cache_root() -> Path:
    """``$XDG_CACHE_HOME/magma_ros`` (default ``~/.cache/magma_ros``): exports and engines."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "magma_ros"


@dataclass(frozen=True)
class BackendOptions:
    """What a compiled backend needs beyond the checkpoint.

    ``execution_provider`` (onnxruntime): '' = from ``device`` (cpu -> CPU, cuda -> CUDA),
    or cpu | cuda | tensorrt. ``export_dir``: where the ONNX export lives ('' = a cache
    directory keyed by the checkpoint's fingerprint, exported on first use).
    ``engine_cache_dir`` / ``engine_file_path`` / ``force_engine_update``: TensorRT engines
    (and the TensorRT EP's cache), named like isaac_ros_tensor_rt's parameters.
    ``precision``: TensorRT precision ('' = fp16 on GPUs). ``verify_backend``: run the
    parity check against PyTorch before serving. ``num_threads``: CPU threads (0 = runtime default).
    """

    execution_provider: str = ""
    export_dir: str = ""
    engine_cache_dir: str = ""
    engine_file_path: str = ""
    force_engine_update: bool = False
    precision: str = ""
    verify_backend: bool = False
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.execution_provider not in EXECUTION_PROVIDERS:
            raise BackendError(f"execution_provider must be one of cpu, cuda, tensorrt or '' (from device), "
                               f"got {self.execution_provider!r}")
        if self.precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {', '.join(p or repr(p) for p in PRECISIONS)}, "
                               f"got {self.precision!r}")
        if self.num_threads < 0:
            raise BackendError(f"num_threads must be >= 0, got {self.num_threads}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def add_backend_arguments(parser: argparse.ArgumentParser, default_device: str = "cpu",
                          default_backend: str | None = "torch") -> None:
    """``--backend`` and the compiled-backend options, identical on every subcommand.
    ``default_backend=None``: no ``--backend`` leaves the choice to a configuration file."""
    group = parser.add_argument_group("inference backend")
    group.add_argument("--backend", default=default_backend, choices=[b for b in BACKENDS if b != "none"],
                       help="torch, onnxruntime or tensorrt (default: "
                            + (default_backend or "the policy configuration's backend") + ")")
    group.add_argument("--execution-provider", default="", choices=EXECUTION_PROVIDERS,
                       help="onnxruntime execution provider (default: from --device)")
    group.add_argument("--export-dir", default="", help="ONNX export directory (default: cached export of "
                                                        "the checkpoint, made on first use)")
    group.add_argument("--engine-cache-dir", default="", help="TensorRT engine cache directory")
    group.add_argument("--engine-file-path", default="", help="TensorRT: use/write this engine file")
    group.add_argument("--force-engine-update", action="store_true", help="TensorRT: rebuild cached engines")
    group.add_argument("--precision", default="", choices=PRECISIONS, help="TensorRT precision (default fp16)")
    group.add_argument("--verify-backend", action="store_true",
                       help="check parity with PyTorch (same greedy tokens, logits cosine >= 0.999) first")
    group.add_argument("--num-threads", type=int, default=0, help="CPU threads for the runtime (0 = default)")


def backend_options(params: object) -> BackendOptions:
    """The options from any object with same-named attributes (node parameters, argparse)."""
    return BackendOptions(**{name: getattr(params, name) for name in BackendOptions.names() if hasattr(params, name)})


def options_from_args(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(**{name: getattr(args, name) for name in BackendOptions.names() if hasattr(args, name)})
