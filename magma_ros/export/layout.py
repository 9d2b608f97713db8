"""What an ONNX export directory holds: file names, graph inputs/outputs, shapes, manifest.

One source of truth for the exporter, the ONNX Runtime and TensorRT backends, the
TensorRT profile builder and the tests. An export directory (``magma-ros export``) holds::

    export.json            manifest: format version, source fingerprint, model dims, graph I/O
    vision.onnx            pixel_values (crops, 3, S, S) -> image_features (crops, g, g, H)
    prefill.onnx           inputs_embeds (1, L, H) -> action_logits (1, 256), hidden (1, H),
                           present.{i}.key / present.{i}.value (1, kv_heads, L, head_dim)
    decode.onnx            inputs_embeds (1, 1, H), past.{i}.key / past.{i}.value (1, kv_heads, P, d)
                           -> action_logits, hidden, present.{i}.* (1, kv_heads, P + 1, d)
    head.onnx              hidden (N, H) -> logits (N, vocab): free text only, never on the action path
    vision.onnx.data, language.onnx.data (prefill + decode share it), head.onnx.data: weights
    embed_tokens.npy       (vocab, H) token embeddings, read on the host (memory-mapped)
    row_separator.npy      (H,) Magma's row separator embedding
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, preprocessor_config.json,
    dataset_statistics.json (if the checkpoint has one): copied, so the directory runs on its own

Dynamic axes: ``crops`` (vision), ``seq`` (prefill), ``past`` (decode), ``n`` (head). The
decode step's position is the cache length ``P``. ``action_logits`` are float32 logits of
the tokenizer's action range ``[lo, hi]`` (index 0 = id ``lo``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "export.json"
VISION = "vision"
PREFILL = "prefill"
DECODE = "decode"
HEAD = "head"
GRAPHS: tuple[str, ...] = (VISION, PREFILL, DECODE, HEAD)
EMBED_FILE = "embed_tokens.npy"
SEPARATOR_FILE = "row_separator.npy"
COPIED_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                 "preprocessor_config.json", "dataset_statistics.json")
OPSET = 18


class ExportError(RuntimeError):
    """An export cannot be written or an export directory cannot be used."""


def graph_file(name: str) -> str:
    return f"{name}.onnx"


def data_file(name: str) -> str:
    """External weights of a graph; prefill and decode share ``language.onnx.data``."""
    return "language.onnx.data" if name in (PREFILL, DECODE) else f"{name}.onnx.data"


@dataclass(frozen=True)
class ModelDims:
    """The numbers every graph's shapes derive from."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int              # rows of lm_head / embed_tokens (may exceed the tokenizer)
    action_lo: int
    action_hi: int
    crop_size: int               # S
    grid: int                    # g = S / 32
    num_crops: int               # preprocessor's maximum crops per image
    max_positions: int
    image_token_index: int
    row_separator: bool
    use_im_start_end: bool
    vision_params: int = 0
    language_params: int = 0
    eos_token_ids: tuple[int, ...] = ()   # the text config's eos ids (free-text stops)
    action_regions: int = 0      # preprocessor's action_regions: extra images of an action prompt

    @property
    def action_rows(self) -> int:
        return self.action_hi - self.action_lo + 1

    def image_tokens(self, rows: int, cols: int) -> int:
        return rows * self.grid * (cols * self.grid + (1 if self.row_separator else 0))

    @property
    def max_image_tokens(self) -> int:
        """Most image positions any allowed crop layout takes."""
        best = 0
        for cols in range(1, self.num_crops + 1):
            for rows in range(1, self.num_crops // cols + 1):
                best = max(best, self.image_tokens(rows, cols))
        return best


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type, shape (ints or axis names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for t in (*self.inputs, *self.outputs):
            named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if named:
                axes[t.name] = named
        return axes


def kv_names(prefix: str, num_layers: int) -> list[str]:
    """``{prefix}.{i}.key, {prefix}.{i}.value`` for every layer, in graph order."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def graph_specs(dims: ModelDims, dtype: str = "float32") -> dict[str, GraphSpec]:
    """Every graph's documented inputs and outputs (``dtype`` = activation element type)."""
    h, kv, d = dims.hidden_size, dims.num_kv_heads, dims.head_dim
    act = TensorSpec("action_logits", "float32", (1, dims.action_rows))
    hidden = TensorSpec("hidden", dtype, (1, h))

    def cache(prefix: str, axis: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(n, dtype, (1, kv, axis, d)) for n in kv_names(prefix, dims.num_layers))

    return {
        VISION: GraphSpec(VISION, (TensorSpec("pixel_values", dtype, ("crops", 3, dims.crop_size, dims.crop_size)),),
                          (TensorSpec("image_features", dtype, ("crops", dims.grid, dims.grid, h)),)),
        PREFILL: GraphSpec(PREFILL, (TensorSpec("inputs_embeds", dtype, (1, "seq", h)),),
                           (act, hidden, *cache("present", "seq"))),
        DECODE: GraphSpec(DECODE, (TensorSpec("inputs_embeds", dtype, (1, 1, h)), *cache("past", "past")),
                          (act, hidden, *cache("present", "past_plus_1"))),
        HEAD: GraphSpec(HEAD, (TensorSpec("hidden", dtype, ("n", h)),),
                        (TensorSpec("logits", "float32", ("n", dims.vocab_size)),)),
    }


@dataclass(frozen=True)
class Manifest:
    """``export.json``: what was exported, from what, and how to feed it."""

    dims: ModelDims
    dtype: str
    opset: int
    source: str
    fingerprint: str
    files: dict[str, list[str]] = field(default_factory=dict)   # graph -> [onnx, external data...]
    weights_included: bool = True
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["graphs"] = {name: {"inputs": [asdict(t) for t in spec.inputs],
                                 "outputs": [asdict(t) for t in spec.outputs]}
                          for name, spec in graph_specs(self.dims, self.dtype).items()}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST) -> Manifest:
        try:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ExportError(f"{source}: export format {version}, this magma_ros reads {FORMAT_VERSION}; "
                                  f"re-export with `magma-ros export`")
            raw = dict(data["dims"])
            raw["eos_token_ids"] = tuple(int(i) for i in raw.get("eos_token_ids", ()))
            dims = ModelDims(**raw)
            return cls(dims=dims, dtype=str(data["dtype"]), opset=int(data["opset"]), source=str(data["source"]),
                       fingerprint=str(data["fingerprint"]), files={k: list(v) for k, v in data["files"].items()},
                       weights_included=bool(data.get("weights_included", True)), format_version=version)
        except (KeyError, TypeError, ValueError) as err:
            raise ExportError(f"{source}: not a magma_ros export manifest ({err})") from err

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ExportError(f"{path}: not found (is {directory} an export directory? see `magma-ros export`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ExportError(f"{path}: cannot read ({err})") from err
        return cls.from_dict(data, str(path))


def checkpoint_fingerprint(directory: str | Path, dtype: str) -> str:
    """A short hash of a checkpoint directory's config, tokenizer and weight files (name,
    size, mtime) plus the export dtype and format: changes whenever a re-export is due."""
    directory = Path(directory)
    h = hashlib.sha256(f"magma_ros-export-v{FORMAT_VERSION}|{dtype}".encode())
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and (path.suffix in (".json", ".safetensors")):
            st = path.stat()
            h.update(f"|{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
            if path.suffix == ".json" and st.st_size < 50_000_000:
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of one file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
