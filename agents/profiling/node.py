"""Who measured: the node's identity, stored with every profile and fit so numbers are never read out of context."""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

_CPU_KEYS = ("model name", "Model", "Hardware", "cpu model", "Processor")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's name from ``/proc/cpuinfo`` (x86 ``model name``; ARM boards' ``Model`` or ``Hardware``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    found: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key in _CPU_KEYS and key not in found:
            found[key] = value
    for key in _CPU_KEYS:
        if key in found:
            return found[key]
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), or the machine's count where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class NodeIdentity:
    """The machine and software a measurement was taken on."""

    hostname: str
    cpu_model: str
    cores: int
    machine_cores: int
    torch_version: str
    torch_threads: int
    platform: str
    machine: str
    python: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeIdentity:
        """The identity stored by :meth:`to_json` (``KeyError``/``TypeError`` when fields are missing)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def differences(self, other: NodeIdentity) -> list[str]:
        """What differs from ``other`` in ways that change latency (CPU, cores, torch version or threads)."""
        out = []
        for key in ("cpu_model", "cores", "torch_version", "torch_threads"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                out.append(f"{key} {theirs!r} here, {mine!r} there")
        return out


def node_identity() -> NodeIdentity:
    """The identity of this node, now (``torch_threads`` as currently set)."""
    return NodeIdentity(
        hostname=socket.gethostname(),
        cpu_model=cpu_model(),
        cores=usable_cores(),
        machine_cores=os.cpu_count() or 1,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        platform=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
    )


def _busy_s() -> float | None:
    """CPU seconds all processes have used so far (Linux ``/proc/stat``: all but idle and iowait)."""
    try:
        ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """How many cores other processes kept busy between :meth:`start` and :meth:`cores` (None off Linux).

    A load average counts this process too, and lags by a minute; this counts only the others.
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Begin a window."""
        self._busy, self._own, self._t = _busy_s(), _own_s(), time.monotonic()

    def cores(self) -> float | None:
        """Average cores used by other processes since :meth:`start`, rounded to 0.01."""
        busy, elapsed = _busy_s(), time.monotonic() - self._t
        if busy is None or self._busy is None or elapsed <= 0:
            return None
        return round(max(0.0, (busy - self._busy) - (_own_s() - self._own)) / elapsed, 2)


def other_load_now(window_s: float = 0.5) -> float | None:
    """Cores other processes keep busy, sampled over ``window_s`` while this one sleeps."""
    meter = OtherLoad()
    time.sleep(window_s)
    return meter.cores()
