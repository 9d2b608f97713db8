"""Create the backend a node's parameters ask for."""

from __future__ import annotations

from magma_ros.backends.base import BackendError, NullBackend, PolicyBackend
from magma_ros.backends.options import BACKENDS, BackendOptions

__all__ = ["BACKENDS", "create_backend"]


def create_backend(name: str, checkpoint: str = "", dtype: str = "float32", device: str = "cpu",
                   statistics: str = "bridge_orig", temperature: float = 0.0,
                   options: BackendOptions | None = None, seed: int | None = None) -> PolicyBackend:
    """Build a backend by name: none | torch | onnxruntime | tensorrt.

    An empty ``checkpoint`` means the embedded default (see default_checkpoint.py). For the
    compiled backends ``checkpoint`` may also be an export directory (``magma-ros export``).
    Raises BackendError with the reason (and how to fix it) when the backend cannot run
    here; never falls back to another backend. With ``options.verify_backend`` a compiled
    backend must pass the parity check against PyTorch before it is returned.
    """
    options = options or BackendOptions()
    if name == "none":
        return NullBackend()
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    model_id = checkpoint
    if not checkpoint:
        from magma_ros.backends.default_checkpoint import default_checkpoint

        path, description = default_checkpoint()
        checkpoint, model_id = str(path), description
    if name == "torch":
        from magma_ros.backends.torch_backend import TorchBackend

        return TorchBackend(checkpoint, dtype=dtype, device=device, statistics=statistics,
                            temperature=temperature, model_id=model_id, seed=seed)
    from magma_ros.backends.compiled import CompiledBackend, ExportedPolicy
    from magma_ros.backends.exports import export_dtype, resolve_export

    if name == "onnxruntime":
        from magma_ros.backends.onnxruntime_backend import OrtRunner, import_onnxruntime, resolve_provider

        import_onnxruntime()
        key, _ = resolve_provider(options, device)
        directory, manifest = resolve_export(checkpoint, options, export_dtype(dtype, key != "cpu"))
        runner = OrtRunner(directory, manifest, options, device)
    else:  # tensorrt
        from magma_ros.backends.tensorrt_backend import TrtRunner, require_tensorrt

        require_tensorrt(device)
        directory, manifest = resolve_export(checkpoint, options, export_dtype(dtype, True))
        runner = TrtRunner(directory, manifest, options, device)
    backend = CompiledBackend(ExportedPolicy(directory, runner, manifest), statistics=statistics,
                              temperature=temperature, seed=seed, model_id=f"{model_id} ({name})")
    if options.verify_backend:
        from magma_ros.backends.parity import check_parity

        report = check_parity(backend, manifest.source or checkpoint)
        if not report.passed:
            backend.close()
            raise BackendError(f"backend {name!r} failed the parity check against torch: {report.summary()}")
    return backend
