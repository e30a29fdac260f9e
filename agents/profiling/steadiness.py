"""Whether the host ran this machine's cores at a steady speed: what no process in a virtual machine shows.

Used by ``cascade profile`` (profiles, fits, predictions), ``cascade sweep`` and the benchmarks; imports no torch.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Python loop iterations in one spell of :class:`SpeedMeter`: about a tenth of a millisecond on a
#: 2020s server core, so most spells see the core in one state (another guest on it, or not).
SPELL_ITERS = 3000
#: A spell this much slower than the core's fastest counts as slowed by something outside this machine.
SLOW_FACTOR = 1.25
#: The least seconds of spells a probe gives each core.
MIN_PER_CORE_S = 0.02
#: Share of slowed spells above which a measurement is flagged as taken on an unsteady host.
UNSTEADY_SHARE = 0.1


def _spell(iters: int) -> float:
    """Seconds one pure-Python loop of ``iters`` additions takes: the same work every time."""
    start = time.perf_counter()
    total = 0
    for i in range(iters):
        total += i
    return time.perf_counter() - start


@dataclass(frozen=True)
class CoreSpeed:
    """How steadily one core ran the same short loop: its spells against the fastest (``fastest_us``)."""

    core: int | None
    spells: int
    fastest_us: float
    median_us: float
    slow_share: float

    @property
    def slowdown(self) -> float:
        """The median spell over the fastest (1.0: as fast as the fastest)."""
        return self.median_us / self.fastest_us if self.fastest_us > 0 else 1.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "core": self.core,
            "spells": self.spells,
            "fastest_us": round(self.fastest_us, 2),
            "median_us": round(self.median_us, 2),
            "slow_share": round(self.slow_share, 3),
        }


def fastest_spell(spells_s: Sequence[float]) -> float:
    """The 5th percentile of spell times: the fastest, without letting one spell that caught a timer edge set it."""
    if not spells_s:
        raise ValueError("no spells to summarise")
    ordered = sorted(spells_s)
    return ordered[int(0.05 * (len(ordered) - 1))]


def core_speed(spells_s: Sequence[float], core: int | None = None, fastest_s: float | None = None) -> CoreSpeed:
    """One core's spell times (seconds) against ``fastest_s``: a spell over :data:`SLOW_FACTOR` times it was slowed.

    ``fastest_s`` defaults to the core's own :func:`fastest_spell`.
    """
    fastest = fastest_spell(spells_s) if fastest_s is None else fastest_s
    slow = sum(1 for s in spells_s if s > SLOW_FACTOR * fastest)
    return CoreSpeed(core, len(spells_s), 1e6 * fastest, 1e6 * statistics.median(spells_s), slow / len(spells_s))


class SpeedMeter:
    """Whether the host ran this machine's cores at a steady speed while something was measured.

    A virtual machine's vCPU can run at half speed while the host gives the physical core's other
    hyperthread to another guest, or lowers its clock for load elsewhere, and nothing in the guest
    shows it: ``/proc/stat`` stays idle and steal time near zero. Seen here: the same loop took
    about 85 µs in some tenths of a millisecond and 150–170 µs in others, for seconds at a time,
    and every latency measured then mixed the two speeds. :meth:`probe` times the same short
    Python loop in back-to-back spells on each core this process may use; probes at several
    moments of a measurement pool their spells, since a whole probe can fall in a slow spell.
    Where the affinity cannot be read or set (not Linux, a sandbox), spells run wherever the
    scheduler puts them (``core`` None).
    """

    def __init__(self) -> None:
        self._spells: dict[int | None, list[float]] = {}

    def probe(self, seconds: float = 0.5, iters: int = SPELL_ITERS) -> None:
        """Time spells for ``seconds`` in all, shared by the usable cores in turn (at least 20 ms each).

        A budget in all rather than per core, so that a 64-core server is not held for half a minute.
        """
        try:
            original: set[int] | None = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            original = None
        cores: list[int | None] = list(sorted(original)) if original else [None]
        each = max(MIN_PER_CORE_S, seconds / len(cores))
        try:
            for core in cores:
                if core is not None:
                    try:
                        os.sched_setaffinity(0, {core})
                    except OSError:  # a sandbox that refuses: time wherever the scheduler runs it
                        core = None
                for _ in range(20):  # warm the loop's bytecode and the core's caches
                    _spell(iters)
                spells = self._spells.setdefault(core, [])
                end = time.perf_counter() + each
                while time.perf_counter() < end:
                    spells.append(_spell(iters))
        finally:
            if original is not None:
                os.sched_setaffinity(0, original)

    def cores(self) -> list[CoreSpeed]:
        """Each probed core's summary over every probe so far, against the fastest spells of any core.

        One reference for all cores, because a core can be slowed for a whole probe and more (seen
        here: one vCPU at 150 µs a spell for seconds while the other ran 83 µs). A board whose cores
        differ (big.LITTLE) shows its small cores as slowed, which is what torch threads on them pay.
        """
        if not self._spells:
            return []
        fastest = fastest_spell([s for spells in self._spells.values() for s in spells])
        ordered = sorted(self._spells.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
        return [core_speed(spells, core, fastest) for core, spells in ordered]


def unsteady(speeds: Sequence[CoreSpeed | dict[str, Any]]) -> str | None:
    """A warning when any core was slowed in over :data:`UNSTEADY_SHARE` of its spells, else None.

    Takes :class:`CoreSpeed` or their JSON, as a profile or fit file holds them.
    """
    # From a file, only the fields this version knows: readers ignore the rest.
    cores = [
        s if isinstance(s, CoreSpeed) else CoreSpeed(**{k: s[k] for k in CoreSpeed.__dataclass_fields__})
        for s in speeds
    ]
    worst = max(cores, key=lambda s: s.slow_share, default=None)
    if worst is None or worst.slow_share <= UNSTEADY_SHARE:
        return None
    where = f"core {worst.core}" if worst.core is not None else "this core"
    return (
        f"the host is not steady: on {where}, {100 * worst.slow_share:.0f} % of {worst.spells} spells of the same"
        f" Python loop ran over {SLOW_FACTOR:.2f}x slower than the fastest (median {worst.slowdown:.2f}x). Unless"
        " other processes here kept the cores busy, something outside this machine slows it (another virtual"
        " machine on the same cores, or the host's clock; or the cores differ, as on a big.LITTLE board), and"
        " latencies measured now mix the speeds: measure again when it is steady, or on a dedicated node"
    )
