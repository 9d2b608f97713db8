"""TensorRT backend: native engines built from the ONNX export (tensorrt Python API).

Thin on purpose: planning (profiles, precision, cache keys, binding shapes) lives in
:mod:`magma_ros.export.tensorrt` and is tested on CPU; this module only loads or builds the
engines and runs them with torch CUDA tensors as device buffers. **Untested here: these
machines have no GPU** (see bench/gpu_check.sh). Without a GPU, or without the tensorrt
package, configuring fails with a message naming what is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magma_ros.backends.base import BackendError
from magma_ros.backends.compiled import GraphRunner
from magma_ros.backends.options import BackendOptions, engine_cache_root
from magma_ros.export.layout import DECODE, PREFILL, VISION, Manifest, graph_file, kv_names

TENSORRT_INSTALL = ("install TensorRT's Python package: pip install tensorrt (x86_64 + CUDA 12/13); on Jetson it "
                    "ships with JetPack (apt install python3-libnvinfer)")


def require_tensorrt(device: str) -> None:
    """BackendError unless ``device`` is a CUDA device that exists and tensorrt imports."""
    if not device.strip().lower().startswith("cuda"):
        raise BackendError(f"backend 'tensorrt' runs on an NVIDIA GPU but device is {device!r}; set device to "
                           f"cuda:0 (or use backend 'onnxruntime' / 'torch' on the CPU)")
    import torch

    if not torch.cuda.is_available():
        raise BackendError("backend 'tensorrt' needs an NVIDIA GPU, and none is visible here "
                           "(torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only torch build)")
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        raise BackendError(f"backend 'tensorrt' needs the tensorrt package: {TENSORRT_INSTALL}") from err


class TrtRunner(GraphRunner):  # pragma: no cover - needs a GPU and TensorRT
    """One engine per graph (vision, prefill, decode), built or loaded through the cache."""

    def __init__(self, export_dir: str | Path, manifest: Manifest, options: BackendOptions, device: str) -> None:
        import tensorrt as trt
        import torch

        from magma_ros.export.tensorrt import (
            build_engine,
            choose_engine,
            profile_shapes,
            select_precision,
        )

        self.torch, self.trt = torch, trt
        self.device = torch.device(device)
        props = torch.cuda.get_device_properties(self.device)
        cc = (props.major, props.minor)
        try:
            plan = select_precision(options.precision, trt.__version__, cc)
        except Exception as err:
            raise BackendError(str(err)) from err
        if plan.export_dtype != manifest.dtype:
            raise BackendError(f"precision {plan.name} needs a {plan.export_dtype} export, {export_dir} is "
                               f"{manifest.dtype}; export with --dtype {plan.export_dtype}")
        self.dims = manifest.dims
        cache = Path(options.engine_cache_dir) if options.engine_cache_dir else engine_cache_root() / "engines"
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engines, self.contexts = {}, {}
        for graph in (VISION, PREFILL, DECODE):
            choice = choose_engine(export_dir, manifest, graph, cache_dir=cache, trt_version=trt.__version__,
                                   gpu_name=props.name, compute_capability=cc, precision=plan.name,
                                   engine_file_path="" if graph != PREFILL else options.engine_file_path,
                                   force_update=options.force_engine_update)
            if choice.build:
                build_engine(Path(export_dir) / graph_file(graph), choice, profile_shapes(manifest.dims, graph), plan)
            engine = self.runtime.deserialize_cuda_engine(choice.path.read_bytes())
            if engine is None:
                raise BackendError(f"TensorRT cannot load {choice.path}; rebuild with force_engine_update")
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self.act_dtype = torch.float16 if manifest.dtype == "float16" else torch.float32
        self.present = kv_names("present", self.dims.num_layers)
        self.past = kv_names("past", self.dims.num_layers)

    def _run(self, graph: str, inputs: dict[str, object], outputs: dict[str, tuple[int, ...]]) -> dict[str, object]:
        torch = self.torch
        ctx = self.contexts[graph]
        engine = self.engines[graph]
        keep = []
        for name, value in inputs.items():
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            t = t.to(self.device, non_blocking=True).contiguous()
            keep.append(t)
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        result = {}
        for name, shape in outputs.items():
            dtype = torch.float32 if engine.get_tensor_dtype(name) == self.trt.float32 else self.act_dtype
            t = torch.empty(shape, dtype=dtype, device=self.device)
            ctx.set_tensor_address(name, t.data_ptr())
            result[name] = t
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT {graph} engine failed to run")
        self.stream.synchronize()
        return result

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        from magma_ros.export.tensorrt import binding_shapes

        shapes = binding_shapes(self.dims, VISION, crops=pixel_values.shape[0])
        out = self._run(VISION, {"pixel_values": pixel_values}, {"image_features": shapes["image_features"]})
        return out["image_features"].float().cpu().numpy()

    def _lm(self, graph: str, inputs: dict[str, object], **sizes: int) -> tuple[np.ndarray, np.ndarray, object]:
        from magma_ros.export.tensorrt import binding_shapes

        shapes = binding_shapes(self.dims, graph, **sizes)
        outs = self._run(graph, inputs, {n: shapes[n] for n in ("action_logits", "hidden", *self.present)})
        return (outs["action_logits"].float().cpu().numpy(), outs["hidden"].float().cpu().numpy(),
                [outs[n] for n in self.present])

    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
        return self._lm(PREFILL, {"inputs_embeds": inputs_embeds}, seq=inputs_embeds.shape[1])

    def decode(self, inputs_embeds: np.ndarray, cache: object) -> tuple[np.ndarray, np.ndarray, object]:
        cache = list(cache)  # type: ignore[call-overload]
        feeds = {"inputs_embeds": inputs_embeds, **dict(zip(self.past, cache, strict=True))}
        return self._lm(DECODE, feeds, past=int(cache[0].shape[2]))

    def close(self) -> None:
        self.contexts.clear()
        self.engines.clear()
