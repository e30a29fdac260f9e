"""``cascade demo``: broker, cloud, edge and device as separate processes on one host, then a summary.

Uses ``config/demo.yaml`` (or ``--config``) with the broker moved to a private
mosquitto on a free loopback port and a fresh run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from tqdm import tqdm

from agents.config import DeploymentConfig, format_errors, load_config
from agents.datasets import SAMPLE_TAR
from agents.errors import UserError
from agents.records import read_records
from agents.signals import sigterm_exits
from agents.summary import format_summary, summarize
from agents.telemetry.influx import InfluxTarget, create_database, influx_query, influx_target
from agents.transport.broker import BrokerProcess, start_any_broker
from agents.transport.mqtt import LinkSettings, MqttLink
from agents.transport.topics import Topics

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"


def demo_config(base: Path, run_dir: Path, broker: BrokerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """The deployment dict the demo runs: the base config on the private ``broker``, flags applied."""
    raw: dict[str, Any] = yaml.safe_load(base.read_text())
    raw["broker"] = {**raw.get("broker", {}), "host": broker.host, "port": broker.port, "protocol": broker.protocol}
    if not broker.shared_subscriptions:
        for tier in raw.get("tiers", {}).values():
            tier["shared"] = False
    raw["run_dir"] = str(run_dir)
    device = raw["devices"][0]
    if args.source:
        device["source"] = {"kind": "imagefolder", "path": args.source}
    elif device["source"].get("kind") == "imagefolder" and not Path(device["source"]["path"]).exists():
        device["source"]["path"] = str(SAMPLE_TAR)
    device["source"]["loop"] = True  # --frames decides how many; a 1,000-image sample loops for more
    if args.threshold is not None:
        device["threshold"] = args.threshold
    if args.edge_threshold is not None:
        raw["tiers"]["edge"]["threshold"] = args.edge_threshold
    if args.no_cloud:
        # Device → edge only, the edge answering at its final exit: the online twin of
        # `cascade eval --cascade <device model>,<edge model>`.
        raw["tiers"]["edge"].pop("forward_to", None)
        raw["tiers"]["edge"].pop("threshold", None)
        raw["tiers"].pop("cloud", None)
    if args.split is not None:
        # The edge finishes the device's model from the activation; with a cloud, what the edge is
        # still unsure of goes on as the original frame to the cloud's own model (MEANet's path).
        device["split"] = args.split
        device["codec"] = args.codec
        resume = {"forward": "frame"} if "cloud" in raw["tiers"] else {}
        raw["tiers"]["edge"]["split_models"] = {device.get("model", "device-small"): resume}
    if args.influx_url:
        influx = {"url": args.influx_url, "database": args.influx_db}
        raw["telemetry"] = {**raw.get("telemetry", {}), "influx": influx}
    try:
        DeploymentConfig.model_validate(raw)
    except ValidationError as exc:  # a flag out of range (--threshold 1.5, --codec bogus): one line, not a traceback
        raise UserError(f"the options do not fit {format_errors(base, exc)}") from None
    return raw


def _prepare_influx(cfg: DeploymentConfig) -> InfluxTarget | None:
    """Create the demo's database (if it is missing) before any agent writes to it."""
    if cfg.telemetry.influx is None:
        return None
    target = influx_target(cfg.telemetry.influx)
    try:
        create_database(target)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"InfluxDB at {target.url}: cannot create database {target.database!r} ({exc}); is influxd running "
            "there, and do CASCADE_INFLUX_USERNAME / CASCADE_INFLUX_PASSWORD name a user allowed to create it?"
        ) from None
    return target


def _influx_points(target: InfluxTarget, since_ns: int) -> str:
    """What landed in InfluxDB since ``since_ns``, for the summary."""
    counts = []
    for measurement, field in (("frames", "frame"), ("health", "uptime_s"), ("clocks", "samples")):
        q = f'SELECT count("{field}") FROM "{measurement}" WHERE time >= {since_ns}'
        try:
            series = influx_query(target, q, target.database)["results"][0].get("series")
        except (OSError, ValueError) as exc:
            return f"InfluxDB {target.url}: could not count the points ({exc})"
        counts.append(f"{int(series[0]['values'][0][1]) if series else 0} {measurement}")
    return f"InfluxDB {target.url} database {target.database}: {', '.join(counts)} points from this run"


def spawn_agent(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Run ``cascade ARGS`` (an agent) as a process, its output to ``log_path``."""
    out = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", "agents.cli", *args], stdout=out, stderr=subprocess.STDOUT)


def run_demo(args: argparse.Namespace) -> int:
    """The ``cascade demo`` command (SIGTERM stops its broker and agents, like Ctrl-C)."""
    with sigterm_exits():
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    base = Path(args.config) if args.config else DEMO_CONFIG
    load_config(base)  # a bad base config fails here, with its own file name in the message
    broker: BrokerProcess | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    influx: InfluxTarget | None = None
    started_ns = 0
    try:
        broker = start_any_broker(run_dir / "broker")
        raw = demo_config(base, run_dir, broker, args)
        cfg_path = run_dir / "deployment.yaml"
        cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        cfg = load_config(cfg_path)
        influx = _prepare_influx(cfg)
        started_ns = time.time_ns() - 1_000_000_000  # health points may be stamped just before the first frame
        topics = Topics(cfg.deployment)
        events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        watcher = MqttLink(
            f"cascade-demo-{os.getpid()}",
            LinkSettings(host=broker.host, port=broker.port, protocol=5 if broker.protocol == "5" else 4),
            lambda t, p, _props: events.put((t, p)),
        )
        watcher.subscribe(f"{topics.root}/agents/+/status")
        watcher.subscribe(f"{topics.root}/agents/+/health", qos=0)
        watcher.start()
        tiers = [t for t in ("cloud", "edge") if t in cfg.tiers]
        for tier in tiers:
            procs[tier] = spawn_agent([tier, "--config", str(cfg_path), "--id", f"{tier}-1"], run_dir / f"{tier}.log")
        wait_online(events, [f"{t}-1" for t in tiers], procs, timeout=120)
        device = cfg.devices[0]
        print(
            f"{broker.kind} on 127.0.0.1:{broker.port}; {', '.join(tiers)} online; device {device.id} starts "
            f"({args.frames} frames, threshold {device.threshold}); in another terminal: "
            f"{_cascade_command()} status --config {cfg_path}",
            flush=True,
        )
        procs["device"] = spawn_agent(
            ["device", "--config", str(cfg_path), "--id", device.id, "--frames", str(args.frames)],
            run_dir / "device.log",
        )
        _follow(events, procs["device"], device.id, args.frames)
        rc = procs["device"].wait()
        if rc != 0:
            raise UserError(f"device agent exited with status {rc}; see {run_dir / 'device.log'}")
        watcher.close()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                code = p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                code = p.wait()
            if code != 0:
                log.warning("%s exited with status %s (see %s)", name, code, run_dir / f"{name}.log")
        if broker is not None:
            broker.stop()
    summary = summarize(read_records(run_dir), args.frames)
    summary["run_dir"] = str(run_dir)
    print(format_summary(summary))
    if influx is not None:
        print(_influx_points(influx, started_ns))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"JSON written: {args.json}")
    return 0 if summary["lost"] == 0 else 1


def wait_online(
    events: queue.Queue[tuple[str, bytes]], agents: list[str], procs: dict[str, subprocess.Popen[bytes]], timeout: float
) -> None:
    """Wait until every agent in ``agents`` published ``online`` (status events); a process that exits is an error."""
    waiting = set(agents)
    deadline = time.monotonic() + timeout
    while waiting:
        for name, p in procs.items():
            if p.poll() is not None:
                raise UserError(f"{name} agent exited with status {p.returncode} while starting")
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(f"agents {sorted(waiting)} did not come online within {timeout:.0f} s")
        try:
            topic, payload = events.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if topic.endswith("/status") and payload == b"online":
            waiting.discard(topic.split("/")[-2])


def _cascade_command() -> str:
    """How to run ``cascade`` from a shell: the venv's script beside this interpreter (often not on PATH)."""
    script = Path(sys.executable).with_name("cascade")
    if not script.exists():
        return "cascade"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _follow(events: queue.Queue[tuple[str, bytes]], proc: subprocess.Popen[bytes], device: str, frames: int) -> None:
    bar = tqdm(total=frames, unit="frame", desc="answered", disable=None)
    while proc.poll() is None:
        try:
            topic, payload = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if topic.endswith(f"/agents/{device}/health"):
            try:  # progress only: a malformed health message (or "answered": Infinity) is skipped, never raised
                h = json.loads(payload)
                answered = int(h.get("answered", 0))
                c = h.get("counters", {})
                offloaded, timeouts = c.get("offloaded", 0), c.get("answered_timeout", 0)
            except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
                continue
            bar.n = answered
            bar.set_postfix(
                fps=h.get("fps"), in_flight=h.get("in_flight"), offloaded=offloaded, timeouts=timeouts, refresh=False
            )
            bar.refresh()
    bar.n = frames
    bar.close()
