"""Create the backend a node's parameters ask for."""

from __future__ import annotations

from magma_ros.backends.base import BackendError, NullBackend, PolicyBackend

BACKENDS = ("torch", "onnxruntime", "tensorrt", "none")


def create_backend(name: str, checkpoint: str = "", dtype: str = "float32", device: str = "cpu",
                   statistics: str = "bridge_orig", temperature: float = 0.0) -> PolicyBackend:
    """Build a backend by name: none | torch | onnxruntime | tensorrt.

    An empty ``checkpoint`` means the embedded default (see default_checkpoint.py).
    Raises BackendError with the reason when the backend cannot run here.
    """
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
                            temperature=temperature, model_id=model_id)
    raise BackendError(f"backend {name!r} is not implemented yet; use torch")
