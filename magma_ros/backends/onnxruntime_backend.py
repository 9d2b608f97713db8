"""ONNX Runtime backend: the exported graphs on the CPU, CUDA or TensorRT execution provider.

Sessions: full graph optimizations, sequential execution, ``num_threads`` intra-op
threads. The KV cache stays an ORT-owned ``OrtValue`` list between decode steps (IO
binding, no host round trip of the cache). A requested provider that ORT cannot load is an
error at configure time (ORT itself would silently run on the CPU instead).

The TensorRT EP is configured with its engine cache on (``trt_engine_cache_enable``,
``trt_engine_cache_path`` = ``engine_cache_dir``, timing cache, fp16 unless
``precision=fp32``) and explicit optimization profiles for crop count and sequence length
(:func:`magma_ros.export.tensorrt.profile_shapes`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from magma_ros.backends.base import BackendError
from magma_ros.backends.compiled import GraphRunner
from magma_ros.backends.options import BackendOptions, engine_cache_root
from magma_ros.export.layout import DECODE, HEAD, PREFILL, VISION, Manifest, graph_file, kv_names

_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                   "tensorrt": "TensorrtExecutionProvider"}
_INSTALL = {
    "cuda": "install onnxruntime-gpu matching your CUDA (pip install onnxruntime-gpu) and an NVIDIA driver",
    "tensorrt": "install onnxruntime-gpu built with TensorRT and TensorRT itself (pip install tensorrt; on "
                "Jetson both come from JetPack)",
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                           "(CPU) or onnxruntime-gpu (CUDA / TensorRT)") from err
    return onnxruntime


def resolve_provider(options: BackendOptions, device: str) -> tuple[str, int]:
    """(provider key, device id) from the options and the ``device`` parameter."""
    dev = device.strip().lower()
    device_id = 0
    if dev.startswith("cuda"):
        _, _, idx = dev.partition(":")
        device_id = int(idx) if idx.isdigit() else 0
    key = options.execution_provider or ("cuda" if dev.startswith("cuda") else "cpu")
    if key == "cpu" and dev.startswith("cuda"):
        raise BackendError(f"execution_provider 'cpu' contradicts device {device!r}; set one of them")
    return key, device_id


def provider_list(key: str, device_id: int, options: BackendOptions, manifest: Manifest, graph: str,
                  ) -> list[tuple[str, dict[str, str]]]:
    """The ORT providers (with options) for one graph."""
    if key == "cpu":
        return [("CPUExecutionProvider", {})]
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id)})
    if key == "cuda":
        return [cuda]
    from magma_ros.export.tensorrt import ort_trt_provider_options

    cache = Path(options.engine_cache_dir) if options.engine_cache_dir else engine_cache_root() / "ort-trt"
    return [("TensorrtExecutionProvider",
             ort_trt_provider_options(manifest, graph, cache, device_id, options.precision or "fp16")), cuda]


class OrtRunner(GraphRunner):
    """ONNX Runtime sessions for vision / prefill / decode (and head, lazily)."""

    def __init__(self, export_dir: str | Path, manifest: Manifest, options: BackendOptions,
                 device: str = "cpu") -> None:
        ort = import_onnxruntime()
        self.ort = ort
        self.directory = Path(export_dir)
        self.manifest = manifest
        if not manifest.weights_included:
            raise BackendError(f"{self.directory} is a structure-only export (no weights); export with weights")
        key, device_id = resolve_provider(options, device)
        available = ort.get_available_providers()
        wanted = _PROVIDER_NAMES[key]
        if wanted not in available:
            raise BackendError(f"onnxruntime has no {wanted} here (available: {', '.join(available)}); "
                               f"{_INSTALL.get(key, '')}")
        self.key, self.device_id, self.options = key, device_id, options
        self.device_type = "cpu" if key == "cpu" else "cuda"
        self.sessions = {name: self._session(name) for name in (VISION, PREFILL, DECODE)}
        self.n_layers = manifest.dims.num_layers
        self.present = kv_names("present", self.n_layers)
        self.past = kv_names("past", self.n_layers)
        self.out_prefill = ["action_logits", "hidden", *self.present]

    def _session(self, graph: str):
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.options.num_threads:
            so.intra_op_num_threads = self.options.num_threads
        so.inter_op_num_threads = 1
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # as for torch's OpenMP threads (set in every magma-ros process and node): idle pool threads
            # sleep instead of spinning, leaving the cores to the renderer and the other nodes
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        providers = provider_list(self.key, self.device_id, self.options, self.manifest, graph)
        path = self.directory / graph_file(graph)
        if not path.is_file():
            raise BackendError(f"{path}: missing from the export directory; re-export with `magma-ros export`")
        try:
            session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime cannot load {path.name}: {err}") from err
        got = session.get_providers()
        if providers[0][0] not in got:
            raise BackendError(f"onnxruntime did not enable {providers[0][0]} for {path.name} (it runs on "
                               f"{', '.join(got)}); {_INSTALL.get(self.key, '')}")
        return session

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.sessions[VISION].run(["image_features"], {"pixel_values": pixel_values})[0]

    def _bind_run(self, session, feeds: dict[str, object]) -> list[object]:
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("action_logits")
        binding.bind_output("hidden")
        for name in self.present:
            binding.bind_output(name, self.device_type, self.device_id if self.device_type == "cuda" else 0)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
        outs = self._bind_run(self.sessions[PREFILL], {"inputs_embeds": inputs_embeds})
        return outs[0].numpy(), outs[1].numpy(), outs[2:]

    def decode(self, inputs_embeds: np.ndarray, cache: object) -> tuple[np.ndarray, np.ndarray, object]:
        feeds: dict[str, object] = {"inputs_embeds": np.ascontiguousarray(inputs_embeds)}
        feeds.update(zip(self.past, cache, strict=True))  # type: ignore[arg-type]
        outs = self._bind_run(self.sessions[DECODE], feeds)
        return outs[0].numpy(), outs[1].numpy(), outs[2:]

    def head(self, hidden: np.ndarray) -> np.ndarray:
        if HEAD not in self.sessions:
            self.sessions[HEAD] = self._session(HEAD)
        return self.sessions[HEAD].run(["logits"], {"hidden": hidden})[0]

    def close(self) -> None:
        self.sessions.clear()
