"""`cascade demo` and `cascade replay` as a user runs them."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.datasets import SAMPLE_TAR
from agents.telemetry.influxd import InfluxServer
from agents.transport.broker import BrokerProcess
from agents.transport.envelope import Envelope, encode
from agents.transport.images import encode_image
from tests.harness import Watcher, edge_workers, records, spawn, write_config
from tests.test_cli_errors import assert_one_line_error, cascade


def run_demo_command(tmp: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run `cascade demo ARGS` as a user would; its JSON summary and what it printed."""
    out = tmp / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", "demo", *args, "--run-dir", str(tmp / "run"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary, proc.stdout


def test_demo_answers_every_frame_and_writes_the_summary(tmp_path: Path) -> None:
    summary, stdout = run_demo_command(tmp_path, "--frames", "120")
    assert summary["frames"] == summary["answered"] == 120 and summary["lost"] == 0
    assert {"frames", "answered", "lost", "timeouts", "accuracy", "offload_fraction", "by_tier", "latency_ms"} <= set(
        summary
    )
    assert set(summary["by_tier"]) == {"device", "edge", "cloud"}
    assert abs(sum(summary["by_tier"].values()) - 1.0) < 1e-6
    assert 0.0 < summary["offload_fraction"] < 1.0
    assert {"p50", "p95", "p99"} == set(summary["latency_ms"])
    assert "answered" in stdout and "latency" in stdout


def test_replayed_sensor_feeds_a_device(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    sensor_source = {"kind": "imagefolder", "path": str(SAMPLE_TAR), "rate": "fixed", "fps": 200, "shuffle": True}
    cfg = write_config(
        tmp_path,
        broker,
        sensors=[{"id": "cam1", "source": sensor_source}],
        devices=[
            {"id": "dev1", "threshold": 0.9, "threads": 1, "source": {"kind": "sensor", "sensor": "cam1"}},
        ],
    )
    with edge_workers(tmp_path, cfg, watcher):
        device = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", name="device")
        watcher.wait_status("dev1", b"online")
        # A frame whose number is not a number: rejected, and the device goes on to the real ones.
        header, payload = encode_image(np.zeros((32, 32, 3), np.uint8), "png")
        bad = Envelope({"id": "cam1-bad", "kind": "frame", "frame": "abc", **header}, payload)
        watcher.link.publish("cascade/t/sensors/cam1/frames", encode(bad), qos=1)
        replay = spawn(tmp_path, "replay", "--config", str(cfg), "--sensor", "cam1", "--frames", "100", name="replay")
        assert replay.wait(120) == 0
        assert device.wait(120) == 0  # the replay's end marker ends the device's stream
    got = records(tmp_path)
    assert len({r["request_id"] for r in got}) == 100
    assert all(r["label"] is not None for r in got)
    assert sum(r["correct"] for r in got) > 50
    watcher.wait_for(lambda w: w.health.get("dev1", {}).get("done"), 30, "the device's last health")
    counters = watcher.health["dev1"]["counters"]
    assert counters["rejected_header"] >= 1 and counters["rejected_unexpected"] == 0, counters


def test_demo_runs_on_the_embedded_broker_without_mosquitto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.demo import run_demo
    from agents.transport import broker as broker_module

    monkeypatch.setattr(broker_module, "mosquitto_binary", lambda: None)
    out = tmp_path / "demo.json"
    args = argparse.Namespace(
        frames=60,
        source=None,
        config=None,
        threshold=None,
        edge_threshold=None,
        no_cloud=True,
        split=None,
        codec="fp32",
        influx_url=None,
        influx_db="cascade",
        run_dir=str(tmp_path / "run"),
        json=str(out),
    )
    assert run_demo(args) == 0
    summary = json.loads(out.read_text())
    assert summary["answered"] == 60 and summary["lost"] == 0 and summary["by_tier"]["edge"] > 0
    assert (tmp_path / "run" / "broker" / "amqtt.yaml").exists()


def test_online_cascade_matches_the_offline_curve(tmp_path: Path) -> None:
    from agents.datasets import load_image_set
    from agents.evaluation.report import evaluate, limit_images

    frames, threshold = 300, 0.8
    online, _ = run_demo_command(tmp_path, "--no-cloud", "--threshold", str(threshold), "--frames", str(frames))
    data = limit_images(load_image_set(SAMPLE_TAR), frames)
    offline = evaluate("device-small", data, "edge-medium", latency=False)
    point = next(p for p in offline["curve"] if p["threshold"] == threshold)
    assert online["timeouts"] == 0
    assert abs(online["accuracy"] - point["accuracy"]) <= 0.01, (online, point)
    assert abs(online["offload_fraction"] - point["exit_fraction"][-1]) <= 0.01, (online, point)


def test_demo_with_a_split_device(tmp_path: Path) -> None:
    summary, _ = run_demo_command(tmp_path, "--split", "2", "--codec", "int8", "--frames", "120")
    assert summary["answered"] == 120 and summary["lost"] == 0 and summary["timeouts"] == 0
    assert summary["by_tier"]["edge"] > 0 and summary["by_tier"]["cloud"] > 0  # finished at the edge, or frames on
    assert summary["bytes_up_per_offload"] > 32 * 16 * 16  # the int8 activation, plus the PNG for the cloud path


def test_demo_sends_its_telemetry_to_influxdb(tmp_path: Path, influx: InfluxServer) -> None:
    """--influx-url/--influx-db: the database is created and every frame, health and clock point lands there."""
    summary, stdout = run_demo_command(tmp_path, "--frames", "150", "--influx-url", influx.url, "--influx-db", "demo_t")
    assert summary["answered"] == 150
    assert influx.count("demo_t") == 150
    assert "150 frames" in stdout
    agents = influx.query('SHOW TAG VALUES FROM "health" WITH KEY = "agent"', "demo_t")["results"][0]["series"][0]
    assert {v[1] for v in agents["values"]} == {"dev1", "edge-1", "cloud-1"}
    runs = influx.query('SELECT "model", "config_digest" FROM "runs"', "demo_t")["results"][0]["series"][0]["values"]
    assert {r[1] for r in runs} == {"device-small", "edge-medium", "cloud-large"} and len({r[2] for r in runs}) == 1
    assert influx.count("demo_t", "clocks", "samples") >= 3  # device→edge, device→cloud, edge→cloud


def _parents() -> dict[int, int]:
    """Every process's parent, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue
        out[int(stat.parent.name)] = int(fields[1])
    return out


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid``: its children, theirs, and so on."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sigterm_stops_everything(tmp: Path, args: list[str], ready: Callable[[], bool], least: int) -> str:
    """Run ``cascade ARGS``; once ``ready()``, SIGTERM it alone: it must exit 143 with none of its processes left.

    What it printed is returned. Processes that outlive it (the bug) are killed here, by pid.
    """
    with (tmp / "command.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert proc.poll() is None, (tmp / "command.log").read_text()
            assert time.monotonic() < deadline, "never ready: " + (tmp / "command.log").read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # a second of frames
        children = _descendants(proc.pid)
        assert len(children) >= least, children
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        time.sleep(0.2)
        left = {pid for pid in children if _running(pid)}
        assert not left, f"left running after SIGTERM: {left}"
        assert code == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            if _running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return (tmp / "command.log").read_text()


def test_sigterm_stops_the_demo_broker_and_agents(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = sigterm_stops_everything(
        tmp_path,
        ["demo", "--frames", "100000", "--run-dir", str(run)],
        lambda: (run / "device.log").exists(),
        least=4,  # mosquitto, cloud, edge, device
    )
    assert "cascade: terminated" in out and "Traceback" not in out


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--threshold", "1.5"], ["devices.0.threshold", "less than or equal to 1", "1.5"]),
        (["--split", "2", "--codec", "bogus"], ["devices.0.codec", "'bogus'"]),
    ],
)
def test_bad_demo_flags_are_one_line_errors(tmp_path: Path, flags: list[str], needles: list[str]) -> None:
    proc = cascade("demo", *flags, "--frames", "10", "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(proc, "the options do not fit", *needles)
