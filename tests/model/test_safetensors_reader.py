"""Our safetensors reader: exact bytes for every dtype, raw key names kept."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from magma_ros.model.safetensors_reader import SafetensorsFile


def test_round_trip_all_dtypes(tmp_path):
    tensors = {
        "blocks.0.gamma": torch.rand(7),
        "bf16": torch.randn(4, 3).to(torch.bfloat16),
        "fp16": torch.randn(2, 2).half(),
        "f64": torch.randn(3).double(),
        "i64": torch.arange(5),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    st = SafetensorsFile.open(path)
    assert set(st.entries) == set(tensors)  # 'gamma' stays 'gamma'
    got = dict(st.iter_tensors())
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert dict(st.iter_tensors({"i64"})).keys() == {"i64"}
    assert [e.start for e in st.entries.values()] == sorted(e.start for e in st.entries.values())
