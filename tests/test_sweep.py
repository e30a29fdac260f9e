"""`cascade sweep`: grid validation, a real two-point sweep with a link, resume, and a failing point."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
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
from tests.test_cli_errors import assert_one_line_error
from tests.test_demo import sigterm_stops_everything

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
        ("grid: {cpu_quota: [-0.5]}", ["grid.cpu_quota.0", "greater than or equal to 0.01"]),
        ("grid: {threshold: [0.5, 1.5]}", ["grid.threshold.1", "less than or equal to 1"]),
        ("grid: {split: [null, 4]}", ["grid.split", "outside device-small's range: 1..3"]),
        ("grid: {split: [0]}", ["grid.split.0", "greater than or equal to 1"]),
        ("grid: {codec: [fp32, fp7]}", ["grid.codec", "unknown activation codec 'fp7'"]),
        ("grid: {threshold: [0.5, 0.5]}", ["grid.threshold", "appears twice"]),
        # Numbers must be numbers: `true` is not 1.0 and '0.5' is not 0.5.
        ("grid: {threshold: [true]}", ["grid.threshold.0", "not a boolean"]),
        ("grid: {threshold: [0.5, '0.7']}", ["grid.threshold.1", "not text"]),
        ("grid: {split: [true]}", ["grid.split.0", "not a boolean"]),
        ("grid: {split: ['2']}", ["grid.split.0", "not text"]),
        ("grid: {split: [1.5]}", ["grid.split.0", "valid integer"]),
        ("grid: {cpu_quota: [true]}", ["grid.cpu_quota.0", "not a boolean"]),
        ("grid: {link: [{rate_mbit: true}]}", ["grid.link.0.rate_mbit", "not a boolean"]),
        ("grid: {link: [{delay_ms: '8'}]}", ["grid.link.0.delay_ms", "not text"]),
        ("grid: {link: [{jitter_ms: false}]}", ["grid.link.0.jitter_ms", "not a boolean"]),
        ("grid: {link: [{loss: '0.1'}]}", ["grid.link.0.loss", "not text"]),
        ("frames: true", ["frames", "not a boolean"]),
        ("grid: {link: [{rate_mbit: 1e3}]}", ["grid.link.0.rate_mbit", "write 1.0e3"]),  # YAML 1.1 reads text
        # No infinity or NaN (agents.config.Strict, the base of the grid's models).
        ("grid: {link: [{rate_mbit: .inf}]}", ["grid.link.0.rate_mbit", "finite number"]),
        ("grid: {link: [{delay_ms: .nan}]}", ["grid.link.0.delay_ms", "finite number"]),
        ("grid: {threshold: [.nan]}", ["grid.threshold.0", "finite number"]),
        ("grid: {cpu_quota: [.inf]}", ["grid.cpu_quota.0", "finite number"]),
        # Under the kernel's least CFS quota (1 ms per 100 ms period): refused, not raised to 0.01.
        ("grid: {cpu_quota: [0.005]}", ["grid.cpu_quota.0", "greater than or equal to 0.01"]),
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
    assert ctx.model == "device-small" and ctx.stages == 4 and ctx.cores == len(os.sched_getaffinity(0))


def test_quota_bound_is_the_cores_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As under `taskset -c 0`: one core to use, however many the host has.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    ctx = grid_context(load_config(DEMO))
    assert ctx.cores == 1
    with pytest.raises(UserError, match="more than the 1 core"):
        load_grid(_grid(tmp_path, "grid: {cpu_quota: [1.5]}"), ctx)
    assert load_grid(_grid(tmp_path, "grid: {cpu_quota: [0.01, 1]}"), ctx).grid.cpu_quota == [0.01, 1.0]


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


def _args(tmp: Path, **overrides: Any) -> argparse.Namespace:
    """``cascade sweep`` options as the parser gives them, for a grid at ``tmp/grid.yaml``."""
    args = {
        "config": None,
        "grid": str(tmp / "grid.yaml"),
        "json": str(tmp / "s.json"),
        "plots": None,
        "frames": None,
        "resume": False,
        "source": None,
        "run_dir": None,
        "point_timeout": 600.0,
    }
    return argparse.Namespace(**{**args, **overrides})


@pytest.fixture
def fake_points(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Points "measured" at once, without processes; the labels of those run, in order."""
    from agents.sweep.runner import SweepSession

    ran: list[str] = []

    def run_point(self: SweepSession, point: Point, point_dir: Path, progress: object = None) -> dict[str, Any]:
        ran.append(point.label())
        return {"status": "ok", "reason": None, "params": point.params(), "label": point.label(), "frames": 5}

    monkeypatch.setattr(SweepSession, "run_point", run_point)
    monkeypatch.setattr("agents.sweep.command.PROBE_S", 0.01)
    return ran


def test_resume_after_the_grid_changed_names_points_in_its_order(tmp_path: Path, fake_points: list[str]) -> None:
    from agents.sweep.command import run_sweep

    _grid(tmp_path, "frames: 5\ngrid: {threshold: [0.5, 0.9]}")
    assert run_sweep(_args(tmp_path)) == 0
    _grid(tmp_path, "frames: 5\ngrid: {threshold: [0.3, 0.5, 0.9]}")
    fake_points.clear()
    assert run_sweep(_args(tmp_path, resume=True)) == 0
    assert fake_points == ["t=0.3 frame"]  # the two others were measured already
    out = json.loads((tmp_path / "s.json").read_text())
    assert [(r["point"], r["params"]["threshold"]) for r in out["results"]] == [
        ("p000", 0.3),
        ("p001", 0.5),
        ("p002", 0.9),
    ]
    assert [r["point"] for r in csv.DictReader((tmp_path / "s.csv").open())] == ["p000", "p001", "p002"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"plots": "a-file"}, "--plots"),
        ({"plots": "a-file/plots"}, "--plots"),
        ({"json": "a-dir.json"}, "is a directory"),
        ({"json": "a-file/s.json"}, "--json"),
        ({"run_dir": "a-file"}, "--run-dir"),
        ({"point_timeout": float("nan")}, "--point-timeout nan"),
        ({"point_timeout": float("inf")}, "--point-timeout inf"),
        ({"point_timeout": 0.0}, "--point-timeout 0"),
    ],
)
def test_bad_outputs_and_options_are_refused_before_any_point(
    tmp_path: Path, fake_points: list[str], overrides: dict[str, Any], needle: str
) -> None:
    from agents.sweep.command import run_sweep

    _grid(tmp_path, "frames: 5\ngrid: {threshold: [0.5, 0.9]}")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir.json").mkdir()
    paths = {k: str(tmp_path / v) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(UserError, match=re.escape(needle)):
        run_sweep(_args(tmp_path, **paths))
    assert fake_points == []
    assert not (tmp_path / "s.jsonl").exists()


def test_cli_refuses_a_plots_path_that_is_a_file(tmp_path: Path) -> None:
    grid = _grid(tmp_path, "frames: 5")
    (tmp_path / "plots").write_text("not a directory")
    proc = _cascade(
        "sweep", "--grid", str(grid), "--json", str(tmp_path / "s.json"), "--plots", str(tmp_path / "plots")
    )
    assert_one_line_error(proc, "--plots", "is a file")
    assert not (tmp_path / "s-runs").exists() and not (tmp_path / "s.jsonl").exists()


def test_sigterm_stops_the_sweep_broker_link_and_agents(tmp_path: Path) -> None:
    grid = _grid(tmp_path, "frames: 100000\ngrid: {link: [{delay_ms: 1}]}")
    runs = tmp_path / "s-runs"
    out = sigterm_stops_everything(
        tmp_path,
        ["sweep", "--grid", str(grid), "--json", str(tmp_path / "s.json")],
        lambda: any(runs.glob("p000-*/device.log")),
        least=5,  # mosquitto, link, edge, cloud, device
    )
    assert "cascade: terminated" in out and "Traceback" not in out
    assert not (tmp_path / "s.json").exists()
