"""Reading safetensors files ourselves: raw keys, strict validation, one tensor at a time.

We parse the header (8-byte little-endian length + JSON) and ``readinto`` each tensor's
bytes straight into its destination tensor: no renaming of keys (the ConvNeXt layer
scales stay ``gamma``), no memory map kept alive, and host memory grows by one tensor at
a time. Corrupt or truncated files raise CheckpointError naming the file (and tensor).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from magma_ros.model.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header record; ``start``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsFile:
    """A validated safetensors header: entries by name (file order kept) and metadata."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]

    @classmethod
    def open(cls, path: str | Path) -> SafetensorsFile:
        """Read and validate the header of ``path``; raises CheckpointError when the file is
        missing, corrupt or shorter than its header says."""
        path = Path(path)
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, "
                                          "shorter than the 8-byte header length)")
                (header_len,) = struct.unpack("<Q", head)
                if header_len > min(size - 8, _MAX_HEADER):
                    raise CheckpointError(f"{path}: corrupt or truncated safetensors header (header "
                                          f"length {header_len} bytes, file has {size} bytes)")
                raw = fh.read(header_len)
        except FileNotFoundError as err:
            raise CheckpointError(f"{path}: weight file not found") from err
        except OSError as err:
            raise CheckpointError(f"{path}: cannot read weight file: {err}") from err
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON: {err})") from err
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
        data_start = 8 + header_len
        metadata = header.pop("__metadata__", None) or {}
        entries: dict[str, TensorEntry] = {}
        for name, rec in header.items():
            entries[name] = _parse_entry(path, name, rec, data_start, size)
        # file order = offset order, so reading sequentially walks the file once
        ordered = dict(sorted(entries.items(), key=lambda kv: kv[1].start))
        return cls(path=path, entries=ordered, metadata=dict(metadata))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: e.shape for name, e in self.entries.items()}

    def iter_tensors(self, names: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, CPU tensor) in file order, only for ``names`` when given."""
        try:
            with open(self.path, "rb", buffering=0) as fh:
                for name, entry in self.entries.items():
                    if names is None or name in names:
                        yield name, read_tensor(fh, entry, self.path)
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot read weight file: {err}") from err


def _parse_entry(path: Path, name: str, rec: Any, data_start: int, size: int) -> TensorEntry:
    if not isinstance(rec, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: entry {name!r} is not an object")
    dtype = DTYPES.get(rec.get("dtype"))
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {rec.get('dtype')!r}")
    shape = rec.get("shape")
    offsets = rec.get("data_offsets")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: corrupt safetensors header: bad shape/offsets for tensor {name!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if (offsets[1] - offsets[0]) != math.prod(shape) * itemsize:
        raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} spans "
                              f"{offsets[1] - offsets[0]} bytes but shape {shape} x {rec['dtype']} needs "
                              f"{math.prod(shape) * itemsize}")
    end = data_start + offsets[1]
    if end > size:
        raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end} "
                              f"but the file has {size} bytes")
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), start=data_start + offsets[0], end=end)


def read_tensor(fh: BinaryIO, entry: TensorEntry, path: Path) -> torch.Tensor:
    """Read one tensor's bytes from an open unbuffered file straight into a new CPU tensor."""
    tensor = torch.empty(entry.shape, dtype=entry.dtype)
    if entry.nbytes == 0:
        return tensor
    view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    fh.seek(entry.start, os.SEEK_SET)
    done = 0
    while done < entry.nbytes:
        n = fh.readinto(view[done:])
        if not n:
            raise CheckpointError(f"{path}: truncated safetensors file while reading tensor {entry.name!r}")
        done += n
    return tensor
