"""`cascade report`: PNGs and a self-contained HTML page from a real run directory, no server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agents.cli import main
from agents.datasets import SAMPLE_TAR
from agents.records import read_records
from agents.report import build_report
from agents.report.aoi import age_of_information
from agents.report.series import Bins, bin_width
from agents.report.views import rejected_totals
from agents.summary import summarize
from agents.transport.broker import BrokerProcess
from tests.harness import Watcher, edge_workers, spawn, write_config

FRAMES = 200
VIEWS = ("overview", "latency", "devices", "agents", "clocks", "aoi")
SECTIONS = ("summary", "metadata", *VIEWS)


@dataclass
class Built:
    run_dir: Path
    out: Path
    stdout: str
    html: str
    json: dict[str, Any]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory from the real pipeline: `cascade demo` (mosquitto, cloud, edge, device on this host)."""
    base = tmp_path_factory.mktemp("report")
    env = {**os.environ, "CASCADE_CACHE": str(base / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", "demo", "--frames", str(FRAMES), "--run-dir", str(base / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return base / "run"


@pytest.fixture(scope="module")
def built(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`cascade report --run RUN --json FILE` through the CLI's entry point, with the default output directory."""
    json_path = tmp_path_factory.mktemp("report-json") / "report.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["report", "--run", str(demo_run), "--json", str(json_path)])
    assert rc == 0, stdout.getvalue()
    out = demo_run / "report"
    return Built(demo_run, out, stdout.getvalue(), (out / "report.html").read_text(), json.loads(json_path.read_text()))


def _has_rows(run_dir: Path, name: str) -> bool:
    return any(p.read_text().strip() for p in run_dir.rglob(name))


def _assert_real_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    assert len(data) > 20_000, f"{path}: {len(data)} bytes"
    with Image.open(path) as img:
        assert img.width >= 600 and img.height >= 300, img.size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, f"{path}: {len(colours or [])} colours, a blank figure?"


def test_every_view_is_a_png_and_the_cli_says_where(built: Built) -> None:
    expected = {"overview", "latency", "devices", "aoi"}
    # Health and clock telemetry come from the agents; each view is drawn exactly when its file has rows.
    expected |= {"agents"} if _has_rows(built.run_dir, "health.jsonl") else set()
    expected |= {"clocks"} if _has_rows(built.run_dir, "clocks.jsonl") else set()
    assert set(built.json["pngs"]) == expected, built.json["not_drawn"]
    assert set(built.json["pngs"]) | set(built.json["not_drawn"]) == set(VIEWS)
    for key in VIEWS:
        png = built.out / f"{key}.png"
        assert png.exists() == (key in expected)
        if key in expected:
            _assert_real_png(png)
            assert f"{png}" in built.stdout
    assert f"HTML report: {built.out / 'report.html'}" in built.stdout
    assert f"{FRAMES} frame records from 1 device" in built.stdout
    assert built.json["skipped_lines"] == {}


def test_html_is_self_contained_with_every_section(built: Built) -> None:
    page = built.html
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert 'src="http' not in page and "<link" not in page and "url(" not in page
    assert 'src="//' not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(built.json["pngs"])
    for key, data in zip(built.json["pngs"], images, strict=True):  # in the order of the sections
        assert base64.b64decode(data) == (built.out / f"{key}.png").read_bytes()
    for key, note in built.json["not_drawn"].items():
        assert note in page, key
    assert "No malformed line" in page
    for agent in ("dev1", "edge-1", "cloud-1"):
        meta = json.loads((built.run_dir / agent / "run.json").read_text())
        assert f"<h3>{agent} <small>({meta['role']})</small></h3>" in page
        assert f"<td>{meta['config_digest']}</td>" in page


def test_html_summary_equals_summarize_of_the_same_records(built: Built) -> None:
    expected = summarize(read_records(built.run_dir), FRAMES)
    embedded = re.search(r'<script type="application/json" id="summary-json">(.*?)</script>', built.html, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1))["summary"] == expected
    assert built.json["summary"] == expected
    cells = dict(re.findall(r'data-key="([^"]+)">([^<]*)<', built.html))
    n = expected["answered"]
    assert cells["frames"] == str(FRAMES) == str(expected["frames"])
    assert cells["answered"] == str(n)
    for key in ("lost", "duplicates", "timeouts"):
        assert cells[key] == str(expected[key])
    assert cells["accuracy"] == f"{100 * expected['accuracy']:.2f}%"
    assert cells["offload_fraction"] == f"{100 * expected['offload_fraction']:.2f}%"
    assert sum(int(cells[f"by_tier.{t}"].split()[0]) for t in expected["by_tier"]) == n
    for tier, share in expected["by_tier"].items():
        assert cells[f"by_tier.{tier}"].startswith(f"{round(share * n)} (")
    for q in ("p50", "p95", "p99"):
        assert float(cells[f"latency_ms.{q}"]) == expected["latency_ms"][q]
        assert float(cells[f"remote_latency_ms.{q}"]) == expected["remote_latency_ms"][q]
    assert built.json["devices"]["dev1"] == expected  # one device: its summary is the run's
    aoi = built.json["aoi_ms"]["dev1"]
    assert aoi["answers"] == FRAMES and 0 < aoi["mean"] <= aoi["peak"]


def test_missing_files_and_malformed_lines_are_stated_not_fatal(demo_run: Path, tmp_path: Path) -> None:
    # Only the device's real records, plus lines a crash or a disk hiccup could leave.
    (tmp_path / "dev1").mkdir()
    real = (demo_run / "dev1" / "frames.jsonl").read_text()
    bad = ['{"request_id": "dev1-x", "tier": "edge"', "[1, 2, 3]", '{"request_id": 7}', "\x00\x01 not json"]
    (tmp_path / "dev1" / "frames.jsonl").write_text(real + "\n".join(bad[:3]) + "\n" + bad[3])
    report = build_report(tmp_path, tmp_path / "out")
    assert report.run.skipped == {"dev1/frames.jsonl": 4}
    assert report.summary == summarize(read_records(demo_run), FRAMES)
    drawn = {v.key for v in report.views if v.png is not None}
    assert drawn == {"overview", "latency", "devices", "aoi"}
    page = report.html.read_text()
    assert "4 malformed lines skipped" in page
    assert "Not drawn: no health.jsonl in the run directory" in page
    assert "Not drawn: no clock estimates (clocks.jsonl)" in page
    assert "no run.json" in page
    assert not (tmp_path / "out" / "clocks.png").exists()


@pytest.mark.parametrize("make", ["empty", "missing", "no-records"])
def test_a_directory_without_records_is_a_clear_error(
    make: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    if make != "missing":
        run_dir.mkdir()
    if make == "no-records":
        (run_dir / "edge-1").mkdir()
        (run_dir / "edge-1" / "health.jsonl").write_text('{"time_ns": 1, "agent": "edge-1"}\n')
        (run_dir / "dev1").mkdir()
        (run_dir / "dev1" / "frames.jsonl").write_text("")
    assert main(["report", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cascade: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    if make == "missing":
        assert f"run directory {run_dir} does not exist" in lines[0]
    else:
        expected = f"no frame records under {run_dir}: is this a run directory? (cascade demo --run-dir ...)"
        assert lines[0] == f"cascade: error: {expected}"
    assert not (run_dir / "report").exists()


def test_two_devices_timeouts_and_rejections(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    # Real agents: two devices on one edge, dev2 with a 1 ms deadline (its offloads time out), and a
    # garbage message the edge must reject and count.
    source = {"kind": "imagefolder", "path": str(SAMPLE_TAR), "shuffle": True, "loop": True}
    device = {"model": "device-small", "threshold": 0.9, "threads": 1, "window": 8, "source": source}
    devices = [{**device, "id": "dev1", "deadline_ms": 3000}, {**device, "id": "dev2", "deadline_ms": 1}]
    cfg = write_config(tmp_path, broker, devices=devices)
    frames = 80
    with edge_workers(tmp_path, cfg, watcher):
        watcher.link.publish("cascade/t/edge/requests", b"\x00garbage\xff" * 7, qos=1)
        procs = [
            spawn(tmp_path, "device", "--config", str(cfg), "--id", d, "--frames", str(frames), name=d)
            for d in ("dev1", "dev2")
        ]
        assert [p.wait(240) for p in procs] == [0, 0]
    run_dir = tmp_path / "runs"
    report = build_report(run_dir)
    assert report.out_dir == run_dir / "report"
    records = read_records(run_dir)
    assert report.summary == summarize(records, 2 * frames)
    for name in ("dev1", "dev2"):
        own = [r for r in records if r["device"] == name]
        assert report.devices[name] == summarize(own, frames)
        assert report.aoi[name].answers == frames
    assert report.summary["timeouts"] == report.devices["dev2"]["timeouts"] > 0
    assert {v.key for v in report.views if v.png is None} <= {"clocks"}
    assert rejected_totals(report.run)["edge-1"].get("garbage", 0) >= 1
    page = report.html.read_text()
    assert "<td>dev1</td>" in page and "<td>dev2</td>" in page
    _assert_real_png(report.out_dir / "devices.png")
    with Image.open(report.out_dir / "devices.png") as img:
        assert img.height > 600  # a row per device


def _rec(capture_ms: int, answer_ms: int) -> dict[str, Any]:
    return {
        "stamps": {
            "capture": 1_000_000_000_000 + capture_ms * 1_000_000,
            "answer": 1_000_000_000_000 + answer_ms * 1_000_000,
        }
    }


def test_aoi_sawtooth_from_handmade_records() -> None:
    t0 = 1_000_000_000_000
    # Frames captured at 0, 10, 20 ms; the one of 10 ms is answered last (a slow remote answer), so it
    # never lowers the age; one record without an answer stamp is ignored.
    records = [_rec(0, 5), _rec(10, 30), _rec(20, 25), {"stamps": {"capture": t0 + 40_000_000}}]
    s = age_of_information(records)
    assert [(t - t0) / 1e6 for t in s.t_ns] == [5, 25, 25, 30]
    assert s.aoi_ms == [5.0, 25.0, 5.0, 10.0]
    # Time-average over [5, 30] ms: (5→25 over 20 ms) + (5→10 over 5 ms) = 300 + 37.5 = 337.5 ms², / 25 ms.
    assert s.mean_ms == pytest.approx(13.5, abs=1e-12)
    assert s.peak_ms == 25.0 and s.answers == 3

    # Answers in order: a regular sawtooth, 10 ms between frames, each answered 2 ms after capture.
    s = age_of_information([_rec(10 * k, 10 * k + 2) for k in range(4)])
    assert [(t - t0) / 1e6 for t in s.t_ns] == [2, 12, 12, 22, 22, 32, 32]
    assert s.aoi_ms == [2.0, 12.0, 2.0, 12.0, 2.0, 12.0, 2.0]
    assert s.mean_ms == pytest.approx(7.0, abs=1e-12) and s.peak_ms == 12.0

    # Two answers at the same instant: the newer frame sets the age; no zero-length corner twice.
    s = age_of_information([_rec(0, 8), _rec(5, 8)])
    assert s.aoi_ms == [8.0, 3.0] and s.mean_ms == 3.0 and s.peak_ms == 8.0

    s = age_of_information([{"stamps": {}}, {}])
    assert s.empty and s.mean_ms is None and s.peak_ms is None


def test_time_bins() -> None:
    assert bin_width(600.0) == 1.0
    assert bin_width(0.6) == 0.02  # a short demo: 30 bins or more
    assert bin_width(10_000.0) == 5.0  # a long run: at most 2,000 bins
    bins = Bins.covering([0.0, 0.5, 2.9], width=1.0)
    assert bins.count == 3 and list(bins.counts([0.1, 0.2, 2.5])) == [2, 0, 1]
    q = bins.percentiles([0.1, 0.2, 0.3, 2.5], [1.0, 2.0, 3.0, 9.0], (50,))
    assert q[0, 0] == 2.0 and q[0, 2] == 9.0 and q[0, 1] != q[0, 1]  # NaN where a bin is empty


def test_infinity_in_run_files_is_not_fatal(demo_run: Path, tmp_path: Path) -> None:
    # Python's json reads Infinity; a stamp or a time that is not finite must not end the report.
    (tmp_path / "dev1").mkdir()
    lines = (demo_run / "dev1" / "frames.jsonl").read_text().splitlines()
    odd = json.loads(lines[0])
    odd["request_id"] += "-odd"
    odd["stamps"]["capture"] = float("inf")
    (tmp_path / "dev1" / "frames.jsonl").write_text("\n".join([*lines, json.dumps(odd)]) + "\n")
    (tmp_path / "dev1" / "health.jsonl").write_text(json.dumps({"time_ns": float("inf"), "agent": "dev1"}) + "\n")
    report = build_report(tmp_path, tmp_path / "out")
    assert report.html.exists() and report.run.start_ns() == min(
        int(json.loads(line)["stamps"]["capture"]) for line in lines
    )
