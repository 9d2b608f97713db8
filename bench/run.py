"""`make bench`: run every benchmark section (bench/*_bench.py, each with a main()) in one go.

Each section runs in an interpreter of its own (``python bench/X_bench.py``), so none inherits
another's threads, memory or DDS participants (a fork after an ONNX Runtime or DDS section once
killed the dataset section's workers). Ratios between compared variants are measured side by
side inside each section, in the same run; absolute numbers depend on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# As in every magma-ros process and node (magma_ros/cli/__init__.py, magma_ros/ros/runtime.py): OpenMP
# threads sleep instead of spinning, so what is measured is what the nodes run (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str]) -> int:
    wanted = set(argv)
    failures = 0
    for path in sorted(HERE.glob("*_bench.py")):
        section = path.stem.removesuffix("_bench")
        if wanted and section not in wanted:
            continue
        print(f"\n=== {section} ({path.name}) ===", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(path)], cwd=HERE.parent, env=os.environ.copy()).returncode
        print(f"--- {section}: {time.perf_counter() - start:.1f} s, exit {code}", flush=True)
        failures += int(code != 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
