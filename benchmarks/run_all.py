"""Run every benchmark in this folder, one after another (``make bench``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    for script in sorted(HERE.glob("*.py")):
        if script.name in {"run_all.py", "__init__.py", "common.py"}:
            continue
        print(f"== {script.stem}", flush=True)
        runpy.run_module(f"benchmarks.{script.stem}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
