"""Find or make the ONNX export a compiled backend runs (see :mod:`magma_ros.export`)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from magma_ros.backends.base import BackendError
from magma_ros.backends.options import BackendOptions, engine_cache_root
from magma_ros.export.layout import MANIFEST, ExportError, Manifest, checkpoint_fingerprint


def export_dtype(dtype: str, on_gpu: bool) -> str:
    """float32 on CPUs; float16 on GPUs for half-precision requests (numpy has no bfloat16)."""
    return "float16" if on_gpu and dtype in ("bfloat16", "float16", "bf16", "fp16") else "float32"


def resolve_export(checkpoint: str | Path, options: BackendOptions, dtype: str = "float32",
                   quiet: bool = False) -> tuple[Path, Manifest]:
    """The export directory for ``checkpoint`` (itself when it is one), exported when missing
    or stale (fingerprint of the checkpoint's files + dtype). Exports are written to a
    staging directory and renamed, so a half-written export is never used."""
    checkpoint = Path(checkpoint)
    try:
        if (checkpoint / MANIFEST).is_file():
            return checkpoint, Manifest.read(checkpoint)
        if not (checkpoint / "config.json").is_file():
            raise BackendError(f"{checkpoint}: neither a checkpoint (config.json) nor an export (export.json)")
        fingerprint = checkpoint_fingerprint(checkpoint, dtype)
        target = Path(options.export_dir) if options.export_dir else engine_cache_root() / "exports" / fingerprint
        if (target / MANIFEST).is_file():
            manifest = Manifest.read(target)
            if manifest.fingerprint == fingerprint and manifest.weights_included and manifest.dtype == dtype:
                return target, manifest
        from magma_ros.export.onnx_export import export_checkpoint

        if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
            raise BackendError(f"export_dir {target} holds other files and no export; give an empty or new directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        say = None if quiet else (lambda msg: print(f"[export] {msg}", file=sys.stderr, flush=True))
        try:
            manifest = export_checkpoint(checkpoint, staging, dtype=dtype, progress=say)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST).is_file():  # nobody else won a race: a real failure
                raise
            shutil.rmtree(staging, ignore_errors=True)
            manifest = Manifest.read(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target, manifest
    except ExportError as err:
        raise BackendError(str(err)) from err
