"""`make bench`: run every benchmark section (bench/*_bench.py, each with a main()) in one go.

Ratios between compared variants are measured side by side inside each section, in the
same run; absolute numbers depend on the machine.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import traceback
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
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{section}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            sys.argv = [str(path)]  # each section parses its own (default) options, not run.py's section names
            code = module.main() or 0
        except Exception:  # one broken section is reported; the others still run
            traceback.print_exc()
            code = 1
        print(f"--- {section}: {time.perf_counter() - start:.1f} s, exit {code}")
        failures += int(code != 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
