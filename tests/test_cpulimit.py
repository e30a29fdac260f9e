"""CPU limits: validation, the clear error without permission, and a real cgroup quota holding a busy process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cpulimit import CGROUP_ROOT, MIN_QUOTA, CpuLimits, apply_limits, check_limits, parse_cores, usable_cores
from agents.errors import UserError
from agents.transport.broker import BrokerProcess
from tests.harness import write_config
from tests.test_cli_errors import assert_one_line_error, cascade


def test_parse_cores() -> None:
    assert parse_cores("0") == (0,)
    assert parse_cores("2-3,0") == (0, 2, 3)
    with pytest.raises(UserError, match="core numbers"):
        parse_cores("first")


def test_impossible_limits_are_refused() -> None:
    n = os.cpu_count() or 1
    with pytest.raises(UserError, match="more than the"):
        check_limits(CpuLimits(quota=len(os.sched_getaffinity(0)) + 1), "device dev1")
    for quota in (0.0, -1.0, 0.005):
        with pytest.raises(UserError, match=r"below 0\.01 core"):
            check_limits(CpuLimits(quota=quota), "device dev1")
    with pytest.raises(UserError, match="not a number of cores"):
        check_limits(CpuLimits(quota=float("nan")), "device dev1")
    check_limits(CpuLimits(quota=MIN_QUOTA), "device dev1")
    with pytest.raises(UserError, match="do not exist"):
        check_limits(CpuLimits(cores=(n + 3,)), "device dev1")
    if n >= 2:
        with pytest.raises(UserError, match="more than the 1 pinned"):
            check_limits(CpuLimits(quota=1.5, cores=(0,)), "device dev1")


def test_the_quota_bound_is_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # As under `taskset -c 0`: one core to use, however many the host has (os.cpu_count() counts them all).
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert usable_cores() == 1
    with pytest.raises(UserError, match="more than the 1 core"):
        check_limits(CpuLimits(quota=1.5), "device dev1")
    check_limits(CpuLimits(quota=1.0), "device dev1")


def _fake_v2(root: Path) -> Path:
    """A cgroup v2-shaped directory with the cpu controller (plain files: nothing is enforced)."""
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (root / "cgroup.procs").write_text("")
    return root


def test_a_small_quota_is_exact_or_refused(tmp_path: Path) -> None:
    """0.015 core is 1500 µs per 100 ms period; 0.005 (under the kernel's 1000 µs) is refused, not raised to 0.01."""
    root = _fake_v2(tmp_path / "v2")
    apply_limits(CpuLimits(quota=0.015), "small", root=root)
    (group,) = (root / "cascade").glob("small-*")
    assert (group / "cpu.max").read_text() == "1500 100000"
    with pytest.raises(UserError, match=r"below 0\.01 core"):
        apply_limits(CpuLimits(quota=0.005), "tiny", root=root)
    assert not list((root / "cascade").glob("tiny-*"))


def test_no_permission_says_what_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A v1-shaped hierarchy whose cgroup cannot be created (root ignores file modes, so refuse it here).
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(UserError, match="run the agent as root, or under systemd with CPUQuota="):
        apply_limits(CpuLimits(quota=0.5), "device-dev1", root=tmp_path)


def test_no_cpu_controller_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cgroup cpu controller"):
        apply_limits(CpuLimits(quota=0.5), "device-dev1", root=tmp_path)


def _can_use_cgroups() -> bool:
    v1 = CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us"
    return (v1.exists() and os.access(v1.parent, os.W_OK)) or os.access(CGROUP_ROOT / "cgroup.procs", os.W_OK)


@pytest.mark.skipif(not _can_use_cgroups(), reason="needs write access to the cgroup cpu hierarchy (root)")
def test_a_real_quota_holds_a_busy_process() -> None:
    """A busy loop under a 0.3-core quota gets about 30% of a core, measured by its own CPU time."""
    code = (
        "import time\n"
        "from agents.cpulimit import CpuLimits, apply_limits\n"
        "apply_limits(CpuLimits(quota=0.3, cores=(0,)), 'test-quota')\n"
        "t0, c0 = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - t0 < 2.0: pass\n"
        "print((time.process_time() - c0) / (time.monotonic() - t0))\n"
    )
    share = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.2 < share < 0.38, share
    assert not list((CGROUP_ROOT / "cpu" / "cascade").glob("test-quota-*")), "the cgroup is removed at exit"


def test_cli_refuses_an_impossible_quota(tmp_path: Path, broker: BrokerProcess) -> None:
    cfg = write_config(tmp_path, broker)
    proc = cascade("device", "--config", str(cfg), "--id", "dev1", "--frames", "1", "--cpu-quota", "64")
    assert_one_line_error(proc, "CPU quota 64", "more than the", "core(s) this process may use")


def test_groups_of_agents_that_are_gone_are_removed(tmp_path: Path) -> None:
    # An agent killed outright cannot leave its group; the next agent to set a quota removes it.
    # (On cgroupfs an empty group's control files do not keep rmdir from working; here they are plain files.)
    root = _fake_v2(tmp_path / "v2")
    base = root / "cascade"
    (base / "device-gone-999999999").mkdir(parents=True)  # no such pid
    (base / f"device-alive-{os.getppid()}").mkdir()
    apply_limits(CpuLimits(quota=0.5), "device-dev1", root=root)
    left = sorted(p.name for p in base.iterdir())
    assert "device-gone-999999999" not in left
    assert f"device-alive-{os.getppid()}" in left and f"device-dev1-{os.getpid()}" in left
