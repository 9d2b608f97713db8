"""TensorRT planning: optimization profiles, precision, engine cache keys, I/O shapes.

Everything here is plain Python (testable without a GPU); only :func:`build_engine` imports
``tensorrt``. Engines are built from the ONNX export (layout.py) as **strongly typed**
networks (TensorRT 10.12+ / 11 dropped the old FP16/BF16 builder flags): the element types
come from the ONNX graph, so an fp16 engine is built from a float16 export, and weight-only
int8 / int4 needs an export whose weights carry Q/DQ nodes.

Engine cache (as isaac_ros_tensor_rt: ``engine_file_path``, ``force_engine_update``, plus a
cache directory): one engine per graph, keyed by the SHA-256 of the ONNX file *and* its
external weights, the TensorRT version, the GPU model and compute capability, the precision
and the optimization profile. Any of those changing selects a different file, so a stale
engine is never loaded; ``force_engine_update`` rebuilds anyway.

Jetson: TensorRT comes with JetPack (``python3-libnvinfer``; no pip wheel), and engines are
not portable between GPU models or TensorRT versions, so build them on the target (the
cache key includes both). Orin is compute capability 8.7 (bf16 and int4 weight-only
supported), Thor 11.0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from magma_ros.export.layout import (
    DECODE,
    HEAD,
    PREFILL,
    VISION,
    ExportError,
    Manifest,
    ModelDims,
    data_file,
    file_sha256,
    graph_file,
    kv_names,
)

# text around the image in an action prompt (system message, headers, instruction): generous
PROMPT_TEXT_TOKENS = 128
TRACE_NEW_TOKENS = 384


class TensorRTPlanError(ExportError):
    """A precision, profile or cache request that cannot be satisfied."""


# -- precision -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionPlan:
    """How to build: the export's activation dtype, weight-only quantization (none | int8 |
    int4) and the minimum TensorRT version / compute capability it needs."""

    name: str
    export_dtype: str
    weight_quantization: str
    min_trt: tuple[int, int]
    min_compute: tuple[int, int]


PRECISIONS: dict[str, PrecisionPlan] = {
    "fp32": PrecisionPlan("fp32", "float32", "none", (10, 0), (0, 0)),
    "fp16": PrecisionPlan("fp16", "float16", "none", (10, 0), (5, 3)),
    "bf16": PrecisionPlan("bf16", "bfloat16", "none", (10, 0), (8, 0)),
    "int8": PrecisionPlan("int8", "float16", "int8", (10, 0), (7, 5)),     # weight-only, fp16 activations
    "int4": PrecisionPlan("int4", "float16", "int4", (10, 0), (8, 0)),     # weight-only (block-wise)
}


def _version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(".")[:2] if p.isdigit()]
    padded = [*parts, 0, 0]
    return padded[0], padded[1]


def select_precision(requested: str, trt_version: str, compute_capability: tuple[int, int]) -> PrecisionPlan:
    """The plan for ``requested`` ('' = fp16), or TensorRTPlanError saying what is missing."""
    name = requested or "fp16"
    if name not in PRECISIONS:
        raise TensorRTPlanError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    plan = PRECISIONS[name]
    if _version(trt_version) < plan.min_trt:
        raise TensorRTPlanError(f"precision {name} needs TensorRT >= {plan.min_trt[0]}.{plan.min_trt[1]}, "
                                f"found {trt_version}")
    if tuple(compute_capability) < plan.min_compute:
        raise TensorRTPlanError(f"precision {name} needs compute capability >= "
                                f"{plan.min_compute[0]}.{plan.min_compute[1]}, this GPU has "
                                f"{compute_capability[0]}.{compute_capability[1]}")
    return plan


# -- optimization profiles -----------------------------------------------------------------
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """(min, opt, max) shape per dynamic input of one graph."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def key(self) -> str:
        return json.dumps({k: [list(s) for s in v] for k, v in sorted(self.shapes.items())})


def sequence_bounds(dims: ModelDims, max_crops: int | None = None) -> tuple[int, int, int]:
    """(min, opt, max) prefill length: opt = one crop per action image (the frame and each of
    ``action_regions``) + prompt text, max = the largest crop layout (up to ``max_crops``) for
    each of them + prompt text, capped at the model's positions."""
    crops = min(max_crops or dims.num_crops, dims.num_crops)
    most = 0
    for cols in range(1, crops + 1):
        for rows in range(1, crops // cols + 1):
            most = max(most, dims.image_tokens(rows, cols))
    images = 1 + dims.action_regions
    most *= images
    opt = images * dims.image_tokens(1, 1) + PROMPT_TEXT_TOKENS // 2
    top = min(most + PROMPT_TEXT_TOKENS, dims.max_positions)
    return 1, min(opt, top), top


def profile_shapes(dims: ModelDims, graph: str, max_crops: int | None = None,
                   max_new_tokens: int = TRACE_NEW_TOKENS) -> Profile:
    """The optimization profile of ``graph`` from the model's dimensions."""
    h, kv, d = dims.hidden_size, dims.num_kv_heads, dims.head_dim
    s = dims.crop_size
    if graph == VISION:
        crops = min(max_crops or dims.num_crops, dims.num_crops)
        return Profile({"pixel_values": ((1, 3, s, s), (1, 3, s, s), (crops, 3, s, s))})
    lo, opt, hi = sequence_bounds(dims, max_crops)
    if graph == PREFILL:
        return Profile({"inputs_embeds": ((1, lo, h), (1, opt, h), (1, hi, h))})
    if graph == DECODE:
        past_max = min(hi + max_new_tokens, dims.max_positions - 1)
        cache = ((1, kv, 1, d), (1, kv, opt + 3, d), (1, kv, past_max, d))
        return Profile({"inputs_embeds": ((1, 1, h),) * 3, **{n: cache for n in kv_names("past", dims.num_layers)}})
    if graph == HEAD:
        return Profile({"hidden": ((1, h), (1, h), (1, h))})
    raise TensorRTPlanError(f"unknown graph {graph!r}")


def binding_shapes(dims: ModelDims, graph: str, *, crops: int = 1, seq: int = 1, past: int = 1) -> dict[str, Shape]:
    """Every input and output shape of one call, for allocating device buffers."""
    h, kv, d = dims.hidden_size, dims.num_kv_heads, dims.head_dim
    if graph == VISION:
        return {"pixel_values": (crops, 3, dims.crop_size, dims.crop_size),
                "image_features": (crops, dims.grid, dims.grid, h)}
    heads = {"action_logits": (1, dims.action_rows), "hidden": (1, h)}
    if graph == PREFILL:
        return {"inputs_embeds": (1, seq, h), **heads,
                **{n: (1, kv, seq, d) for n in kv_names("present", dims.num_layers)}}
    if graph == DECODE:
        return {"inputs_embeds": (1, 1, h), **{n: (1, kv, past, d) for n in kv_names("past", dims.num_layers)},
                **heads, **{n: (1, kv, past + 1, d) for n in kv_names("present", dims.num_layers)}}
    if graph == HEAD:
        return {"hidden": (seq, h), "logits": (seq, dims.vocab_size)}
    raise TensorRTPlanError(f"unknown graph {graph!r}")


def check_within_profile(profile: Profile, shapes: Mapping[str, Shape]) -> None:
    """TensorRTPlanError when a call's input shape lies outside the engine's profile."""
    for name, (lo, _, hi) in profile.shapes.items():
        shape = shapes.get(name)
        if shape is None:
            continue
        if len(shape) != len(lo) or any(not (a <= x <= b) for a, x, b in zip(lo, shape, hi, strict=True)):
            raise TensorRTPlanError(f"input {name} shape {tuple(shape)} is outside the engine profile "
                                    f"[{lo} .. {hi}]; rebuild with a larger max_crops / sequence")


# -- engine cache --------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineKey:
    graph: str
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    profile: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    def file_name(self) -> str:
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu_name).strip("-").lower()
        return f"{self.graph}-{self.precision}-trt{self.trt_version}-{gpu}-{self.digest()}.engine"


def onnx_digest(export_dir: str | Path, graph: str) -> str:
    """SHA-256 over a graph file and its external weights (weights change -> new engine)."""
    directory = Path(export_dir)
    h = hashlib.sha256()
    for name in (graph_file(graph), data_file(graph)):
        path = directory / name
        if path.is_file():
            h.update(name.encode())
            h.update(file_sha256(path).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class EngineChoice:
    path: Path
    key: EngineKey
    build: bool            # True: (re)build, False: load the cached file
    reason: str


def choose_engine(export_dir: str | Path, manifest: Manifest, graph: str, *, cache_dir: str | Path,
                  trt_version: str, gpu_name: str, compute_capability: tuple[int, int], precision: str,
                  engine_file_path: str = "", force_update: bool = False, max_crops: int | None = None,
                  ) -> EngineChoice:
    """Where the engine of ``graph`` lives and whether it must be built.

    ``engine_file_path`` (one graph's engine, as isaac_ros_tensor_rt) is used as given: loaded
    when present unless ``force_update``; its key is stored next to it (``.key.json``) and a
    mismatch (other ONNX, TensorRT or GPU) forces a rebuild instead of loading a wrong engine.
    """
    profile = profile_shapes(manifest.dims, graph, max_crops)
    key = EngineKey(graph, onnx_digest(export_dir, graph), trt_version, gpu_name, tuple(compute_capability),
                    precision, profile.key())
    path = Path(engine_file_path) if engine_file_path else Path(cache_dir) / key.file_name()
    if force_update:
        return EngineChoice(path, key, True, "force_engine_update")
    if not path.is_file():
        return EngineChoice(path, key, True, "no cached engine")
    stamp = path.with_suffix(path.suffix + ".key.json")
    if not stamp.is_file():
        return EngineChoice(path, key, True, "cached engine has no key file")
    try:
        stored = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return EngineChoice(path, key, True, "unreadable key file")
    if stored != json.loads(json.dumps(asdict(key))):
        changed = sorted(k for k, v in json.loads(json.dumps(asdict(key))).items() if stored.get(k) != v)
        return EngineChoice(path, key, True, f"stale engine ({', '.join(changed)} changed)")
    return EngineChoice(path, key, False, "cached")


def write_key(choice: EngineChoice) -> None:
    stamp = choice.path.with_suffix(choice.path.suffix + ".key.json")
    stamp.write_text(json.dumps(asdict(choice.key), indent=2))


# -- onnxruntime's TensorRT execution provider ------------------------------------------------
def _shape_text(shapes: Mapping[str, Shape]) -> str:
    return ",".join(f"{n}:{'x'.join(str(x) for x in s)}" for n, s in shapes.items())


def ort_trt_provider_options(manifest: Manifest, graph: str, cache_dir: str | Path, device_id: int = 0,
                             precision: str = "fp16") -> dict[str, str]:
    """TensorRT EP options: engine + timing cache on, explicit profiles from the model config."""
    profile = profile_shapes(manifest.dims, graph)
    lo = {n: s[0] for n, s in profile.shapes.items()}
    opt = {n: s[1] for n, s in profile.shapes.items()}
    hi = {n: s[2] for n, s in profile.shapes.items()}
    cache = Path(cache_dir)
    return {
        "device_id": str(device_id),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "True" if precision in ("fp16", "int8", "int4") else "False",
        "trt_bf16_enable": "True" if precision == "bf16" else "False",
        "trt_profile_min_shapes": _shape_text(lo),
        "trt_profile_opt_shapes": _shape_text(opt),
        "trt_profile_max_shapes": _shape_text(hi),
    }


# -- building (GPU only) ----------------------------------------------------------------------
def build_engine(onnx_path: str | Path, choice: EngineChoice, profile: Profile, plan: PrecisionPlan,
                 workspace_gb: float = 8.0) -> Path:  # pragma: no cover - needs TensorRT and a GPU
    """Build a strongly typed engine from ``onnx_path`` with ``profile``; writes the engine
    and its key file. Weight-only int8/int4 need Q/DQ weights in the ONNX (not produced by
    ``magma-ros export`` yet)."""
    import tensorrt as trt

    if plan.weight_quantization != "none":
        raise TensorRTPlanError(f"precision {plan.name} (weight-only {plan.weight_quantization}) needs an export "
                                "with Q/DQ-quantized weights, which magma-ros export does not produce yet")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTPlanError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes.items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTPlanError(f"TensorRT failed to build an engine from {onnx_path}")
    choice.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = choice.path.with_suffix(".partial")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(choice.path)
    write_key(choice)
    return choice.path
