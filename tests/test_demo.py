"""`cascade demo` and `cascade replay` as a user runs them."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.datasets import SAMPLE_TAR
from agents.telemetry.influxd import InfluxServer
from agents.transport.broker import BrokerProcess
from tests.harness import Watcher, edge_workers, records, spawn, write_config


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
        replay = spawn(tmp_path, "replay", "--config", str(cfg), "--sensor", "cam1", "--frames", "100", name="replay")
        assert replay.wait(120) == 0
        assert device.wait(120) == 0  # the replay's end marker ends the device's stream
    got = records(tmp_path)
    assert len({r["request_id"] for r in got}) == 100
    assert all(r["label"] is not None for r in got)
    assert sum(r["correct"] for r in got) > 50


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
