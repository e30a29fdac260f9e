"""Run every benchmark in this folder, one after another (``make bench``).

The host-speed meter runs between the benchmarks: on a virtual machine whose cores another guest
shares, a benchmark's ratio compares a baseline and a candidate timed at different speeds, and the
run ends by saying so.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from agents.profiling.steadiness import SpeedMeter, unsteady

HERE = Path(__file__).resolve().parent


def main() -> int:
    speed = SpeedMeter()
    speed.probe()
    for script in sorted(HERE.glob("*.py")):
        if script.name in {"run_all.py", "__init__.py", "common.py"}:
            continue
        print(f"== {script.stem}", flush=True)
        runpy.run_module(f"benchmarks.{script.stem}", run_name="__main__")
        speed.probe()
    cores = speed.cores()
    print("== host speed between the benchmarks")
    for core in cores:
        print(
            f"core {core.core}: {core.spells} spells, fastest {core.fastest_us:.1f} µs, median {core.median_us:.1f} µs,"
            f" {100 * core.slow_share:.0f} % slowed"
        )
    host = unsteady(cores)
    print(f"warning: {host}" if host else "the host ran the cores at a steady speed between the benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
