"""Loading keeps peak host memory near one copy of the weights (meta build + per-tensor
reads). Small-scale guard; bench/model_bench.py --memory measures a multi-GB checkpoint
and the naive double-copy load for comparison."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from magma_ros.model.fixtures import write_large_checkpoint

CHILD = """
import json, sys
from pathlib import Path
import magma_ros.model
from magma_ros.model import load_checkpoint

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
base = rss("VmRSS")
loaded = load_checkpoint(sys.argv[1], dtype="fp32")
print(json.dumps({"base": base, "peak": rss("VmHWM")}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_loading_peak_rss_near_one_copy(tmp_path):
    weights = write_large_checkpoint(tmp_path, 0.4, hidden_size=1024)
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    growth = r["peak"] - r["base"]
    # one copy plus the largest tensor and allocator slack; a naive load needs ~2x
    assert growth < 1.25 * weights, (growth / 1e9, weights / 1e9)
