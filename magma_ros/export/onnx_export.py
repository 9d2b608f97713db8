"""Export a Magma checkpoint to ONNX: vision, prefill, decode and head graphs (see layout.py).

Two modes:

* **weights** (default): the checkpoint is loaded (meta build, filled tensor by tensor: peak
  host memory about one copy of the weights) and each graph is written with the
  TorchScript-based exporter, weights as external data next to each graph (``*.onnx.data``).
* **structure only** (``weights=False``): the model is built on the ``meta`` device from
  ``config.json`` and the weight files' headers, and each graph is traced with the
  ``torch.export`` (dynamo) exporter without any weight data; the graphs are written
  without initializers. This checks a Magma-8B-sized configuration's graphs (names, shapes,
  dynamic axes) in well under 4 GB of host memory; such an export cannot run.

Why two exporters (torch 2.14): the TorchScript-based one (``dynamo=False``) writes these
graphs with weights in about a second each for small models and keeps the traced names;
the ``torch.export``-based one (``dynamo=True``, the default in torch 2.9+) is the one that
can trace a meta-device model, but takes minutes for a 32-layer model and, with its optimizer on,
fails on meta tensors, so it runs with ``optimize=False`` for structure-only exports.

Opset 18. The host side (token embedding lookup, crop tiling, row separators) reads
``embed_tokens.npy`` / ``row_separator.npy``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from magma_ros.export.graphs import DecodeGraph, HeadGraph, PrefillGraph, VisionGraph
from magma_ros.export.layout import (
    COPIED_FILES,
    DECODE,
    EMBED_FILE,
    GRAPHS,
    HEAD,
    MANIFEST,
    OPSET,
    PREFILL,
    SEPARATOR_FILE,
    VISION,
    ExportError,
    Manifest,
    ModelDims,
    checkpoint_fingerprint,
    data_file,
    graph_file,
    graph_specs,
)

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def model_dims(model, tokenizer, preprocessor) -> ModelDims:
    """The export's dimensions from a (possibly meta) model, its tokenizer and preprocessor."""
    text = model.config.text
    rng = tokenizer.action_token_range
    head_dim = text.head_dim or text.hidden_size // text.num_attention_heads
    vision_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("language_model."))
    language_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("language_model."))
    return ModelDims(
        hidden_size=text.hidden_size, num_layers=text.num_hidden_layers, num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads, head_dim=head_dim, intermediate_size=text.intermediate_size,
        vocab_size=model.language_model.lm_head.weight.shape[0], action_lo=rng.lo, action_hi=rng.hi,
        crop_size=preprocessor.base_img_size, grid=preprocessor.base_img_size // 32,
        num_crops=preprocessor.num_crops, max_positions=text.max_position_embeddings,
        action_regions=len(preprocessor.action_regions),
        image_token_index=model.config.image_token_index, row_separator=model.config.vision.mm_use_row_seperator,
        use_im_start_end=model.config.mm_use_image_start_end, vision_params=vision_params,
        language_params=language_params, eos_token_ids=tuple(int(i) for i in text.eos_token_id),
    )


def _example_inputs(dims: ModelDims, dtype: torch.dtype, device: str) -> dict[str, tuple[torch.Tensor, ...]]:
    kv = [torch.zeros(1, dims.num_kv_heads, 5, dims.head_dim, dtype=dtype, device=device)
          for _ in range(2 * dims.num_layers)]
    return {
        VISION: (torch.zeros(2, 3, dims.crop_size, dims.crop_size, dtype=dtype, device=device),),
        PREFILL: (torch.zeros(1, 7, dims.hidden_size, dtype=dtype, device=device),),
        DECODE: (torch.zeros(1, 1, dims.hidden_size, dtype=dtype, device=device), *kv),
        HEAD: (torch.zeros(2, dims.hidden_size, dtype=dtype, device=device),),
    }


def _modules(model, token_range) -> dict[str, torch.nn.Module]:
    return {VISION: VisionGraph(model).eval(), PREFILL: PrefillGraph(model, token_range).eval(),
            DECODE: DecodeGraph(model, token_range).eval(), HEAD: HeadGraph(model).eval()}


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and tracer warnings; keep them out of the user's way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            yield


class _DataWriter:
    """Appends initializers to external data files, one file per group, storing a tensor
    that another graph already wrote (same bytes) only once: prefill and decode
    share ``language.onnx.data``."""

    def __init__(self, directory: Path, threshold: int = 1024) -> None:
        self.directory = directory
        self.threshold = threshold
        self.written: dict[tuple[str, str, bytes], tuple[str, int, int]] = {}  # (file, size, hash) -> where

    def externalize(self, proto, data_name: str) -> None:
        import hashlib

        from onnx import TensorProto, numpy_helper

        path = self.directory / data_name
        with open(path, "ab") as f:
            for tensor in proto.graph.initializer:
                raw = numpy_helper.to_array(tensor).tobytes()
                if len(raw) < self.threshold:
                    continue
                key = (data_name, str(len(raw)), hashlib.blake2b(raw, digest_size=16).digest())
                if key not in self.written:
                    f.seek(0, 2)
                    offset = f.tell()
                    pad = (-offset) % 64  # aligned, so runtimes can memory-map it
                    f.write(b"\0" * pad)
                    f.write(raw)
                    self.written[key] = (data_name, offset + pad, len(raw))
                location, offset, length = self.written[key]
                tensor.ClearField("raw_data")
                for field_name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field_name)
                tensor.data_location = TensorProto.EXTERNAL
                del tensor.external_data[:]
                for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v


def _declare_shapes(proto, spec) -> None:
    """Write the documented shapes onto the graph's inputs and outputs: the tracer names some
    fixed sizes symbolically (e.g. the head dimension after rotary slicing)."""
    values = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
    for t in (*spec.inputs, *spec.outputs):
        dims = values[t.name].type.tensor_type.shape.dim
        del dims[:]
        for d in t.shape:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def _export_weights(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec,
                    writer: _DataWriter, data_name: str) -> None:
    import tempfile

    import onnx

    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        with _quiet():
            torch.onnx.export(module, args, str(staged), input_names=names_in, output_names=names_out,
                              dynamic_axes=spec.dynamic_axes(), opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
        proto = onnx.load(str(staged), load_external_data=True)
    _declare_shapes(proto, spec)
    writer.externalize(proto, data_name)
    onnx.save_model(proto, str(path))


def _export_structure(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec) -> None:
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    dyn = []
    for t in spec.inputs:
        axes = {i: torch.export.Dim(f"{t.name.replace('.', '_')}_{d}" if d not in ("seq", "crops", "n", "past")
                                    else d, min=2 if d != "crops" else 1, max=1 << 16)
                for i, d in enumerate(t.shape) if isinstance(d, str)}
        dyn.append(axes or None)
    # every cache input shares one "past" dimension
    past = torch.export.Dim("past", min=2, max=1 << 16)
    dyn = [({k: past for k in a} if a and spec.name == DECODE else a) for a in dyn]
    shapes: tuple[object, ...] = tuple(dyn)
    if spec.name == DECODE:  # forward(inputs_embeds, *past): the cache is one var-positional group
        shapes = (dyn[0], tuple(dyn[1:]))
    with _quiet():
        program = torch.onnx.export(module, args, None, input_names=names_in, output_names=names_out,
                                    dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, optimize=False,
                                    verbose=False)
        program.save(str(path), include_initializers=False)


def export_model(model, tokenizer, preprocessor, out_dir: str | Path, *, dtype: str = "float32",
                 weights: bool = True, source: str = "", fingerprint: str = "",
                 graphs: tuple[str, ...] = GRAPHS, progress: Callable[[str], None] | None = None) -> Manifest:
    """Write the export directory for an in-memory model (``weights=False``: meta model)."""
    if dtype not in _TORCH_DTYPES:
        raise ExportError(f"export dtype must be one of {', '.join(_TORCH_DTYPES)}, got {dtype!r}")
    if model.config.vision.img_anyres_strategy != "crop":
        raise ExportError(f"only the 'crop' anyres strategy exports (got "
                          f"{model.config.vision.img_anyres_strategy!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    torch_dtype = _TORCH_DTYPES[dtype]
    is_meta = any(p.is_meta for p in model.parameters())
    if weights and is_meta:
        raise ExportError("a model on the meta device has no weights: export it with weights=False")
    if weights and model.dtype != torch_dtype:
        model = model.to(torch_dtype)
    dims = model_dims(model, tokenizer, preprocessor)
    specs = graph_specs(dims, dtype)
    device = "meta" if is_meta else str(model.device)
    examples = _example_inputs(dims, torch_dtype, device)
    modules = _modules(model, tokenizer.action_token_range)
    files: dict[str, list[str]] = {}
    writer = _DataWriter(out)
    for name in graphs:
        (out / graph_file(name)).unlink(missing_ok=True)
        (out / data_file(name)).unlink(missing_ok=True)
    for name in graphs:
        t0 = time.perf_counter()
        path = out / graph_file(name)
        if weights:
            _export_weights(modules[name], examples[name], path, specs[name], writer, data_file(name))
            files[name] = [path.name, data_file(name)]
        else:
            _export_structure(modules[name], examples[name], path, specs[name])
            files[name] = [path.name]
        say(f"{name}: {path.name} in {time.perf_counter() - t0:.1f} s")
    if weights:
        np_dtype = _NUMPY_DTYPES[dtype]
        embed = model.embed_tokens.weight.detach().to(torch.float32).cpu().numpy().astype(np_dtype)
        np.save(out / EMBED_FILE, embed)
        sep = model.multi_modal_projector.row_seperator.detach().reshape(-1).to(torch.float32).cpu().numpy()
        np.save(out / SEPARATOR_FILE, sep.astype(np_dtype))
    manifest = Manifest(dims=dims, dtype=dtype, opset=OPSET, source=source, fingerprint=fingerprint,
                        files=files, weights_included=weights)
    (out / MANIFEST).write_text(manifest.to_json())
    return manifest


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, dtype: str = "float32", weights: bool = True,
                      graphs: tuple[str, ...] = GRAPHS, progress: Callable[[str], None] | None = None) -> Manifest:
    """Export a checkpoint directory (see module docstring). Copies the tokenizer and
    preprocessor files so the export directory runs on its own."""
    from magma_ros.model import MagmaModelError
    from magma_ros.model.config import MagmaConfig, PreprocessorConfig, read_json
    from magma_ros.model.loading import (
        CONFIG_FILE,
        PREPROCESSOR_FILE,
        find_weight_files,
        load_checkpoint,
        read_headers,
    )
    from magma_ros.model.modeling import MagmaForCausalLM
    from magma_ros.model.tokenizer import MagmaTokenizer
    from magma_ros.model.vision import infer_convnext_spec

    checkpoint = Path(checkpoint)
    say = progress or (lambda _msg: None)
    try:
        if weights:
            say(f"loading {checkpoint}")
            loaded = load_checkpoint(checkpoint, dtype=dtype)
            model, tokenizer, preprocessor = loaded.model, loaded.tokenizer, loaded.preprocessor
        else:
            tokenizer = MagmaTokenizer.from_dir(checkpoint)
            config = MagmaConfig.from_file(checkpoint / CONFIG_FILE).with_token_ids(
                tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
            pre_path = checkpoint / PREPROCESSOR_FILE
            preprocessor = (PreprocessorConfig.from_dict(read_json(pre_path, PREPROCESSOR_FILE),
                                                         default_size=config.vision.img_size)
                            if pre_path.is_file() else PreprocessorConfig(base_img_size=config.vision.img_size))
            files, weight_map = find_weight_files(checkpoint)
            shapes = {n: e.shape for n, (_, e) in read_headers(files, weight_map).items()}
            spec = infer_convnext_spec(shapes, config.vision.vision_backbone, source=str(checkpoint)).spec
            with torch.device("meta"):
                model = MagmaForCausalLM(config, spec)
    except MagmaModelError as err:
        raise ExportError(f"cannot read checkpoint {checkpoint}: {err}") from err
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
    return export_model(model, tokenizer, preprocessor, out, dtype=dtype, weights=weights, source=str(checkpoint),
                        fingerprint=checkpoint_fingerprint(checkpoint, dtype), graphs=graphs, progress=progress)
