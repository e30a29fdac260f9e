"""Make one host behave like a weaker node: a CPU quota (cgroup), pinned cores, a torch thread count.

The quota goes through the kernel's CFS bandwidth control, in a cgroup of its own per
agent process: cgroup v2 ``cpu.max`` where the cpu controller is on the unified
hierarchy, else cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``. A quota of 0.5
means half of one core's time per 100 ms period, over all the process's threads. The
kernel gives a group at least 1 ms per period, so quotas below :data:`MIN_QUOTA`
(0.01 core) are refused rather than silently raised to it.
Creating a cgroup needs root or a delegated subtree; under systemd the unit's own
``CPUQuota=`` (or ``systemd-run --scope -p CPUQuota=50% ...``) does the same without it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from agents.errors import UserError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
#: The smallest quota, in cores: the kernel's minimum of 1000 µs of CPU per period of :data:`PERIOD_US`.
MIN_QUOTA = 1000 / PERIOD_US


@dataclass(frozen=True)
class CpuLimits:
    """What to hold an agent process to; None leaves that aspect as it is."""

    quota: float | None = None  # cores' worth of CPU time, e.g. 0.5
    cores: tuple[int, ...] | None = None
    threads: int | None = None

    def describe(self) -> str:
        """For logs: what is in force."""
        parts = []
        if self.quota is not None:
            parts.append(f"CPU quota {self.quota:g} core(s)")
        if self.cores is not None:
            parts.append(f"cores {','.join(map(str, self.cores))}")
        if self.threads is not None:
            parts.append(f"{self.threads} torch thread(s)")
        return ", ".join(parts) or "no CPU limits"


def parse_cores(text: str) -> tuple[int, ...]:
    """``0,2-3`` → (0, 2, 3); a clear error for anything else."""
    cores: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cores.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--cores {text!r}: expected core numbers like 0 or 0,2-3") from None
    if not cores:
        raise UserError(f"--cores {text!r}: no core given")
    return tuple(sorted(set(cores)))


def usable_cores() -> int:
    """The cores this process may run on: a process started under ``taskset`` (or in a cpuset) gets fewer."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_limits(limits: CpuLimits, what: str) -> None:
    """Refuse impossible limits before touching anything."""
    available = os.cpu_count() or 1  # cores that exist: pinning may widen the affinity this process started with
    if limits.quota is not None:
        usable = usable_cores()
        if not math.isfinite(limits.quota):
            raise UserError(f"{what}: CPU quota {limits.quota:g} is not a number of cores")
        if limits.quota > usable:
            raise UserError(
                f"{what}: CPU quota {limits.quota:g} is more than the {usable} core(s) this process may use"
            )
        if limits.quota < MIN_QUOTA:
            raise UserError(
                f"{what}: CPU quota {limits.quota:g} is below {MIN_QUOTA:g} core (the kernel's least CFS quota, "
                f"1 ms per {PERIOD_US // 1000} ms period)"
            )
    if limits.cores is not None:
        bad = [c for c in limits.cores if not 0 <= c < available]
        if bad:
            raise UserError(f"{what}: cores {bad} do not exist here (cores 0..{available - 1})")
        if limits.quota is not None and limits.quota > len(limits.cores):
            raise UserError(f"{what}: CPU quota {limits.quota:g} is more than the {len(limits.cores)} pinned core(s)")
    if limits.threads is not None and limits.threads < 1:
        raise UserError(f"{what}: threads must be at least 1")


def apply_limits(limits: CpuLimits, name: str, root: Path = CGROUP_ROOT) -> None:
    """Hold this process to ``limits`` (cores and quota for all its threads, torch's thread count)."""
    check_limits(limits, name)
    if limits.cores is not None:
        os.sched_setaffinity(0, limits.cores)
    if limits.quota is not None:
        _cgroup_quota(limits.quota, f"{name}-{os.getpid()}", root)
    if limits.threads is not None:
        import torch

        torch.set_num_threads(limits.threads)
    if limits != CpuLimits():
        log.info("%s: %s", name, limits.describe())


def _cgroup_quota(quota: float, group: str, root: Path) -> None:
    quota_us = round(quota * PERIOD_US)  # check_limits refused anything under the kernel's 1000 µs
    v1 = root / "cpu"
    v2_controllers = root / "cgroup.controllers"
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            path = v1 / "cascade" / group
            path.mkdir(parents=True, exist_ok=True)
            remove_stale_groups(path.parent)
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota_us))
            parent_procs = v1 / "cgroup.procs"
        elif v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
            base = root / "cascade"
            base.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # already enabled, or not ours to enable (then mkdir below says so)
                (base / "cgroup.subtree_control").write_text("+cpu")
            path = base / group
            path.mkdir(exist_ok=True)
            remove_stale_groups(base)
            (path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
            parent_procs = root / "cgroup.procs"
        else:
            raise UserError(
                f"a CPU quota needs the cgroup cpu controller, and neither {v1}/cpu.cfs_quota_us (v1) nor a cpu "
                f"entry in {v2_controllers} (v2) is there; run the agent under systemd with CPUQuota= instead"
            )
        (path / "cgroup.procs").write_text(str(os.getpid()))
    except PermissionError as exc:
        raise UserError(
            f"a CPU quota needs write access to the cgroup hierarchy ({exc.filename}): run the agent as root, "
            "or under systemd with CPUQuota= (systemd-run --scope -p CPUQuota=50% cascade device ...)"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot set the CPU quota through {root}: {exc}") from None
    atexit.register(_leave, path, parent_procs)


def remove_stale_groups(base: Path) -> None:
    """Remove the groups under ``base`` of agents that are gone (``<name>-<pid>``, that pid not running).

    An agent leaves its group at exit; one killed outright (SIGKILL, the OOM killer) cannot, and its
    empty group stays behind. The kernel refuses to remove a group that still holds a process.
    """
    for group in base.iterdir():
        pid = group.name.rsplit("-", 1)[-1]
        if group.is_dir() and pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                group.rmdir()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _leave(path: Path, parent_procs: Path) -> None:
    """Move back to the parent group and remove ours (a group with a process in it cannot be removed)."""
    with contextlib.suppress(OSError):
        parent_procs.write_text(str(os.getpid()))
        path.rmdir()
