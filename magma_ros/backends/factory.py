"""Create the backend a node's parameters ask for."""

from __future__ import annotations

from magma_ros.backends.base import BackendError, NullBackend, PolicyBackend


def create_backend(name: str, checkpoint: str = "", dtype: str = "float32", device: str = "cpu",
                   statistics: str = "bridge_orig", temperature: float = 0.0) -> PolicyBackend:
    """Build a backend by name: none | torch | onnxruntime | tensorrt.

    Raises BackendError with the reason when the backend cannot run here.
    """
    if name == "none":
        return NullBackend()
    raise BackendError(f"backend {name!r} is not available in this build (known: none)")
