"""How fast this node reads memory, by the size read over and over: what a network whose weights outgrow the cache pays.

The fit times each layer shape alone, with its weights in the last-level cache. Inside a
network every weight is read once a forward pass, so once a network's weights outgrow that
cache they stream from memory instead, at memory's speed, and its layers cannot be faster
than that. Reading one buffer over and over here (2 vCPUs of a Xeon VM) ran at 71 GB/s for
4 MiB, 49–53 GB/s for 16–128 MiB, and 25–28 GB/s for 256–1024 MiB; vgg11's 392 MiB linear
layer took 13.1 ms, 31 GB/s. The curve is measured by the fit and kept in its file.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Buffer sizes the fit reads, MiB: from inside the caches to well past this machine's L3.
SIZES_MIB = (4, 16, 64, 128, 256, 512, 1024)

#: At most this share of the memory available when the fit starts goes to one buffer.
MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class MemoryCurve:
    """Read bandwidth (GB/s) for each working-set size (MiB), sizes ascending."""

    sizes_mib: tuple[float, ...]
    gbs: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.sizes_mib or len(self.sizes_mib) != len(self.gbs):
            raise ValueError(f"{len(self.sizes_mib)} sizes for {len(self.gbs)} bandwidths")
        if any(b <= a for a, b in itertools.pairwise(self.sizes_mib)) or self.sizes_mib[0] <= 0:
            raise ValueError(f"sizes must be positive and ascending: {list(self.sizes_mib)}")
        if any(not (math.isfinite(g) and g > 0) for g in self.gbs):
            raise ValueError(f"bandwidths must be positive: {list(self.gbs)}")

    def bandwidth_gbs(self, mib: float) -> float:
        """The bandwidth at a working set of ``mib``: interpolated in log size, flat past either end."""
        sizes, gbs = self.sizes_mib, self.gbs
        if mib <= sizes[0]:
            return gbs[0]
        for (a, ga), (b, gb) in itertools.pairwise(zip(sizes, gbs, strict=True)):
            if mib <= b:
                t = (math.log(mib) - math.log(a)) / (math.log(b) - math.log(a))
                return ga + t * (gb - ga)
        return gbs[-1]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"sizes_mib": list(self.sizes_mib), "gbs": [round(g, 2) for g in self.gbs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryCurve:
        """Read :meth:`to_json` back (ValueError, KeyError or TypeError when malformed)."""
        return cls(tuple(float(s) for s in data["sizes_mib"]), tuple(float(g) for g in data["gbs"]))


def available_mib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """Memory available to a new allocation now, MiB (None where the OS does not say).

    Linux's ``MemAvailable`` counts page cache the kernel would drop, which free pages alone do
    not: a node that has read its datasets has little memory free but plenty available.
    """
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def measure_memory(
    sizes_mib: Sequence[int] = SIZES_MIB, reps: int = 5, on_size: Callable[[], object] | None = None
) -> MemoryCurve:
    """Read a buffer of each size over and over (a sum on every torch thread): the median rate of ``reps`` reads.

    Sizes above :data:`MEMORY_SHARE` of the available memory are left out (a Raspberry Pi has
    little to spare), but never the smallest. ``on_size`` is called after each size.
    """
    free = available_mib()
    usable = [s for s in sizes_mib if free is None or s <= MEMORY_SHARE * free] or [min(sizes_mib)]
    rates: list[float] = []
    for mib in usable:
        buffer = torch.ones(mib * 2**20 // 4)
        buffer.sum()  # first touch: the pages are faulted in here, not timed
        times = []
        for _ in range(max(1, reps)):
            start = time.perf_counter()
            buffer.sum()
            times.append(time.perf_counter() - start)
        rates.append(mib * 2**20 / statistics.median(times) / 1e9)
        del buffer
        if on_size is not None:
            on_size()
    return MemoryCurve(tuple(float(s) for s in usable), tuple(rates))
