"""`cascade sweep`: grid validation, a real two-point sweep with a link, resume, and a failing point."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.config import load_config
from agents.cpulimit import CGROUP_ROOT
from agents.errors import UserError
from agents.sweep.grid import GridContext, LinkSpec, Point, grid_context, grid_points, load_grid

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "config" / "demo.yaml"
CTX = GridContext(model="device-small", stages=4, cores=2)


def _can_use_cgroups() -> bool:
    v1 = CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us"
    return (v1.exists() and os.access(v1.parent, os.W_OK)) or os.access(CGROUP_ROOT / "cgroup.procs", os.W_OK)


def _grid(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("grid: {threshold: [0.5], colour: [blue]}", ["grid.colour", "Extra inputs"]),
        ("frames: 10\nsteps: 3", ["steps", "Extra inputs"]),
        ("grid: {link: [{rate_mbit: -1}]}", ["grid.link.0.rate_mbit", "greater than 0"]),
        ("grid: {link: [{delay_ms: -8}]}", ["grid.link.0.delay_ms", "greater than or equal to 0"]),
        ("grid: {link: [{rate_mbit: 10, bandwidth: 3}]}", ["grid.link.0.bandwidth", "Extra inputs"]),
        ("grid: {cpu_quota: [0.5, 3]}", ["grid.cpu_quota", "more than the 2 core(s)"]),
        ("grid: {cpu_quota: [-0.5]}", ["grid.cpu_quota.0", "greater than 0"]),
        ("grid: {threshold: [0.5, 1.5]}", ["grid.threshold.1", "less than or equal to 1"]),
        ("grid: {split: [null, 4]}", ["grid.split", "outside device-small's range: 1..3"]),
        ("grid: {split: [0]}", ["grid.split.0", "greater than or equal to 1"]),
        ("grid: {codec: [fp32, fp7]}", ["grid.codec", "unknown activation codec 'fp7'"]),
        ("grid: {threshold: [0.5, 0.5]}", ["grid.threshold", "appears twice"]),
        ("grid: {threshold: []}", ["grid.threshold", "at least 1"]),
        ("frames: 0", ["frames", "greater than or equal to 1"]),
        ("- 1\n- 2", ["expected a mapping"]),
        ("grid: {threshold: [0.5", ["not valid YAML"]),
    ],
)
def test_bad_grids_name_the_key(tmp_path: Path, body: str, needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        load_grid(_grid(tmp_path, body), CTX)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_missing_grid_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read the grid"):
        load_grid(tmp_path / "nope.yaml", CTX)


def test_context_comes_from_the_config() -> None:
    ctx = grid_context(load_config(DEMO))
    assert ctx.model == "device-small" and ctx.stages == 4 and ctx.cores == (os.cpu_count() or 1)


def test_points_are_the_product_with_config_defaults(tmp_path: Path) -> None:
    device = load_config(DEMO).devices[0]
    body = (
        "grid: {threshold: [0.5, 0.9], split: [null, 2], codec: [fp32, int8], "
        "link: [{rate_mbit: 10, delay_ms: 8, jitter_ms: 3}]}"
    )
    grid = load_grid(_grid(tmp_path, body), CTX).grid
    points = grid_points(grid, device)
    # Frames have no codec: 2 thresholds × (frame + split 2 × 2 codecs) = 6, threshold innermost.
    assert len(points) == 6
    assert [p.threshold for p in points[:2]] == [0.5, 0.9]
    assert {(p.split, p.codec) for p in points} == {(None, None), (2, "fp32"), (2, "int8")}
    assert all(p.link == LinkSpec(rate_mbit=10, delay_ms=8, jitter_ms=3) for p in points)
    assert all(p.cpu_quota == device.cpu.quota for p in points)  # the axis left out: the config's value
    assert len({p.key(100, "x") for p in points}) == 6
    assert points[0].link is not None
    assert points[0].link.cli_args() == ["--seed", "0", "--delay", "8", "--jitter", "3", "--rate", "10"]
    assert grid_points(load_grid(_grid(tmp_path, "frames: 5"), CTX).grid, device) == [
        Point(threshold=device.threshold, split=None, codec=None, link=None, cpu_quota=device.cpu.quota)
    ]


def _cascade(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_cli_refuses_a_bad_grid_before_starting_anything(tmp_path: Path) -> None:
    grid = _grid(tmp_path, "grid: {link: [{rate_mbit: -5}]}")
    proc = _cascade("sweep", "--grid", str(grid), "--json", str(tmp_path / "s.json"))
    assert proc.returncode == 2
    assert "cascade: error:" in proc.stderr and "grid.link.0.rate_mbit" in proc.stderr
    assert not (tmp_path / "s-runs").exists()


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A real two-point sweep (100 frames each) through a shaped link, device CPU limited where allowed."""
    tmp = tmp_path_factory.mktemp("sweep")
    quota = "0.5" if _can_use_cgroups() else "null"
    grid = _grid(
        tmp,
        f"frames: 100\ngrid:\n  threshold: [0.6, 0.9]\n  link: [{{rate_mbit: 20, delay_ms: 2, jitter_ms: 1}}]\n"
        f"  cpu_quota: [{quota}]\n",
    )
    proc = _cascade("sweep", "--grid", str(grid), "--json", str(tmp / "s.json"), "--plots", str(tmp / "plots"))
    return tmp, proc


def test_a_sweep_measures_every_point(swept: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, proc = swept
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads((tmp / "s.json").read_text())
    assert out["points"] == out["ok"] == 2 and out["failed"] == 0 and out["tier_starts"] == 1
    assert out["link_starts"] == 1  # both points share the link setting: one link process
    # The host-speed meter ran between the points, on every usable core.
    assert [c["core"] for c in out["host_speed"]] == sorted(os.sched_getaffinity(0))
    assert all(c["spells"] > 0 and c["fastest_us"] <= c["median_us"] for c in out["host_speed"])
    low, high = out["results"]
    for r in (low, high):
        assert r["status"] == "ok" and r["reason"] is None
        assert r["frames"] == r["answered"] == 100 and r["lost"] == 0
        assert 0.5 < r["accuracy"] <= 1.0
        assert r["params"]["rate_mbit"] == 20 and r["params"]["delay_ms"] == 2
        assert {"p50", "p95", "p99", "mean"} <= set(r["latency_ms"])
        assert set(r["latency_by_path_ms"]) == {"device", "edge", "cloud", "timeout"}
        assert sum(p["n"] for p in r["latency_by_path_ms"].values()) == 100
        assert r["aoi_ms"]["mean"] > 0 and r["aoi_ms"]["peak"] >= r["aoi_ms"]["mean"]
        assert r["wall_s"] > 0 and r["run_s"] > 0
        assert r["bytes_up_per_frame"] == pytest.approx(r["offload_fraction"] * r["bytes_up_per_offload"], rel=1e-3)
        frames = [json.loads(ln) for ln in (Path(r["run_dir"]) / "dev1" / "frames.jsonl").read_text().splitlines()]
        remote = [f for f in frames if f["outcome"] == "remote"]
        # The link's 2 ms each way: no offloaded frame comes back faster than the two delays less the jitter.
        assert remote and min(f["round_trip_ms"] for f in remote) >= 2.0
    assert high["offload_fraction"] > low["offload_fraction"]
    assert high["params"]["threshold"] == 0.9 and low["params"]["threshold"] == 0.6
    device_log = (Path(low["run_dir"]) / "device.log").read_text()
    if _can_use_cgroups():
        assert "CPU quota 0.5" in device_log
    # CSV: one row per point with the parameters as columns; JSONL: one line per point.
    rows = list(csv.DictReader((tmp / "s.csv").open()))
    assert [r["threshold"] for r in rows] == ["0.6", "0.9"]
    assert {"latency_ms_p95", "aoi_ms_mean", "bytes_up_per_frame", "latency_by_path_ms_cloud_p50"} <= set(rows[0])
    assert len((tmp / "s.jsonl").read_text().splitlines()) == 2
    # Plots: a PNG for each axis that varies, a note for the one that does not (one link rate).
    plots = out["plots"]
    for name in ("latency_vs_threshold", "accuracy_vs_latency", "offload_vs_threshold", "latency_breakdown"):
        assert Path(plots[name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots["latency_vs_bandwidth"].startswith("skipped")
    assert "skipped" in proc.stdout and "| p000 |" in proc.stdout


def test_resume_runs_only_what_is_not_done(swept: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, first = swept
    assert first.returncode == 0
    grid = tmp / "grid.yaml"
    args = ("sweep", "--grid", str(grid), "--json", str(tmp / "s.json"), "--resume")
    before = json.loads((tmp / "s.json").read_text())["results"]
    proc = _cascade(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 already done, 0 to run" in proc.stdout
    out = json.loads((tmp / "s.json").read_text())
    assert out["run_now"] == 0 and out["results"] == before and out["tier_starts"] == 0
    # Mark the second point failed in the results file: --resume runs that one again, and only it.
    lines = (tmp / "s.jsonl").read_text().splitlines()
    second = {**json.loads(lines[1]), "status": "failed", "reason": "test"}
    (tmp / "s.jsonl").write_text(lines[0] + "\n" + json.dumps(second) + "\n")
    proc = _cascade(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads((tmp / "s.json").read_text())
    assert out["run_now"] == 1 and out["ok"] == 2
    assert out["results"][0] == before[0] and out["results"][1]["started"] != before[1]["started"]


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.sweep import command

    good = Point(threshold=0.8, split=None, codec=None, link=None, cpu_quota=None)
    # A quota the grid would refuse, past validation: the device agent refuses it at start.
    bad = Point.model_construct(threshold=0.8, split=None, codec=None, link=None, cpu_quota=64.0)
    monkeypatch.setattr(command, "grid_points", lambda *_: [bad, good])
    grid = _grid(tmp_path, "frames: 60")
    args = argparse.Namespace(
        config=None,
        grid=str(grid),
        json=str(tmp_path / "s.json"),
        plots=str(tmp_path / "plots"),
        frames=None,
        resume=False,
        source=None,
        run_dir=None,
        point_timeout=120.0,
    )
    assert command.run_sweep(args) == 1
    out: dict[str, Any] = json.loads((tmp_path / "s.json").read_text())
    failed, ok = out["results"]
    assert failed["status"] == "failed" and "device exited with status 2" in failed["reason"]
    assert "CPU quota 64" in failed["reason"]
    assert ok["status"] == "ok" and ok["answered"] == 60
    assert out["failed"] == 1 and out["ok"] == 1
    assert [json.loads(ln)["status"] for ln in (tmp_path / "s.jsonl").read_text().splitlines()] == ["failed", "ok"]
    assert out["plots"]["latency_vs_threshold"].startswith("skipped")  # one threshold among the points measured
    deployment = yaml.safe_load((Path(ok["run_dir"]) / "deployment.yaml").read_text())
    assert deployment["devices"][0]["threshold"] == 0.8
    # One host, one clock: no clock pings or probe trains beside the frames measured.
    assert not deployment["telemetry"]["clock"]["enabled"] and not deployment["telemetry"]["bandwidth"]["enabled"]
