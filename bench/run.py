"""`make bench`: run every benchmark section (bench/*_bench.py, each with a main()) in one go.

Ratios between compared variants are measured side by side inside each section, in the
same run; absolute numbers depend on the machine.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    failures = 0
    for path in sorted(HERE.glob("*_bench.py")):
        section = path.stem.removesuffix("_bench")
        if wanted and section not in wanted:
            continue
        print(f"\n=== {section} ({path.name}) ===", flush=True)
        spec = importlib.util.spec_from_file_location(f"bench_{section}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        start = time.perf_counter()
        sys.argv = [str(path)]  # each section parses its own (default) options, not run.py's section names
        code = module.main() or 0
        print(f"--- {section}: {time.perf_counter() - start:.1f} s, exit {code}")
        failures += int(code != 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
