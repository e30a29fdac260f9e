"""The processes a sweep keeps across its points, and one point's run.

One private broker for the whole sweep. The tier workers (edge, cloud, ...) start once
and are restarted only when their configuration changes, when one of them has died, or
after a failed point (a clean slate for the next). Sweep points only change device
settings, and every point's deployment lists the device model under the offload tier's
``split_models`` whenever any point splits, so the tiers' configuration is the same for
every point of a grid and they normally start once. A ``cascade link`` process stands
between the device and the broker for points with link settings, kept while
consecutive points share them. The device is a fresh process per point, in the point's
own run directory. Clock sync and the bandwidth probe are off: every agent runs on this
host's one clock, and their messages would share the emulated link with the frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agents.config import DeploymentConfig
from agents.demo import demo_config, spawn_agent, wait_online
from agents.errors import UserError
from agents.records import read_records
from agents.sweep.grid import LinkSpec, Point
from agents.sweep.metrics import point_metrics
from agents.transport.broker import BrokerProcess, free_port, start_any_broker
from agents.transport.mqtt import LinkSettings, MqttLink
from agents.transport.topics import Topics

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass
class SweepSettings:
    """What every point of one sweep shares."""

    base: Path  # the deployment YAML the points are derived from
    root: Path  # the sweep's run directory: broker, tiers, links, one directory per point
    frames: int
    source: str | None = None  # ImageFolder tar or folder instead of the config's source
    any_split: bool = False  # some point splits: the offload tier must resume the device model
    point_timeout_s: float = 600.0
    online_timeout_s: float = 120.0


class PointFailed(Exception):
    """A point cannot be measured; the message is its recorded reason."""


def log_reason(path: Path, limit: int = 400) -> str:
    """The most telling line of an agent's log: its ``cascade: error:`` line, else its last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"(no log at {path})"
    errors = [ln for ln in lines if ln.startswith("cascade: error:") or "Error" in ln.split(":", 1)[0]]
    line = (errors or lines or ["(empty log)"])[-1]
    return line[:limit]


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class _Link:
    spec: LinkSpec
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class _Tiers:
    key: str
    generation: int
    ids: dict[str, str]  # worker id → tier name
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


class SweepSession:
    """Broker, watcher, tier workers and link of one sweep; started on the first point, stopped by :meth:`close`."""

    def __init__(self, settings: SweepSettings) -> None:
        self.s = settings
        self.broker: BrokerProcess | None = None
        self.watcher: MqttLink | None = None
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.tiers: _Tiers | None = None
        self.link: _Link | None = None
        self.tier_starts = 0
        self.link_starts = 0
        self.setup_s = 0.0  # broker, tiers and links starting, summed
        self._generation = 0

    # --- the long-lived processes ---------------------------------------------------------------
    def _ensure_broker(self) -> BrokerProcess:
        if self.broker is not None and self.broker.process.poll() is not None:
            log.warning("the broker exited with status %s; restarting it", self.broker.process.returncode)
            self._stop_tiers()
            self._stop_link()
            self.broker.restart()
        if self.broker is None:
            t0 = time.monotonic()
            self.broker = start_any_broker(self.s.root / "broker")
            self.setup_s += time.monotonic() - t0
        if self.watcher is None:
            deployment = yaml.safe_load(self.s.base.read_text())["deployment"]
            root = Topics(str(deployment)).root
            self.watcher = MqttLink(
                f"cascade-sweep-{os.getpid()}",
                LinkSettings(
                    host=self.broker.host, port=self.broker.port, protocol=5 if self.broker.protocol == "5" else 4
                ),
                lambda t, p, _props: self.events.put((t, p)),
            )
            self.watcher.subscribe(f"{root}/agents/+/status")
            self.watcher.subscribe(f"{root}/agents/+/health", qos=0)
            self.watcher.start()
            if not self.watcher.wait_connected(10):
                raise PointFailed(f"the sweep cannot connect to its broker at {self.broker.host}:{self.broker.port}")
        return self.broker

    def _ensure_tiers(self, raw: dict[str, Any], broker: BrokerProcess) -> None:
        key = json.dumps({k: raw.get(k) for k in ("tiers", "broker", "telemetry", "deployment")}, sort_keys=True)
        if self.tiers is not None:
            dead = {i: p.returncode for i, p in self.tiers.procs.items() if p.poll() is not None}
            if dead:
                log.warning("tier worker(s) exited %s; restarting the tiers", dead)
                self._stop_tiers()
            elif self.tiers.key != key:
                log.info("tier settings changed; restarting the tiers")
                self._stop_tiers()
        if self.tiers is not None or not raw.get("tiers"):
            return
        t0 = time.monotonic()
        self._generation += 1
        gen = self._generation
        run_dir = self.s.root / f"tiers-{gen}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "deployment.yaml"
        cfg_path.write_text(yaml.safe_dump({**raw, "run_dir": str(run_dir)}, sort_keys=False))
        ids = {f"{name}-{gen}": name for name in raw["tiers"]}
        tiers = _Tiers(key, gen, ids)
        self.tiers = tiers
        for wid, name in ids.items():
            command = "cloud" if name == "cloud" else "edge"
            tiers.procs[wid] = spawn_agent(
                [command, "--config", str(cfg_path), "--id", wid, "--tier", name], run_dir / f"{name}.log"
            )
        self.tier_starts += 1
        try:
            wait_online(self.events, list(ids), tiers.procs, timeout=self.s.online_timeout_s)
        except UserError as exc:
            reasons = [f"{ids[w]}: {log_reason(run_dir / f'{ids[w]}.log')}" for w, p in tiers.procs.items() if p.poll()]
            self._stop_tiers()
            raise PointFailed(f"tiers did not start: {exc}{'; ' if reasons else ''}{'; '.join(reasons)}") from None
        finally:
            self.setup_s += time.monotonic() - t0

    def _ensure_link(self, spec: LinkSpec | None, broker: BrokerProcess) -> str | None:
        if self.link is not None and (self.link.spec != spec or self.link.proc.poll() is not None):
            self._stop_link()
        if spec is None:
            return None
        if self.link is None:
            t0 = time.monotonic()
            self.link_starts += 1
            port = free_port()
            log_path = self.s.root / f"link-{self.link_starts}.log"
            proc = spawn_agent(
                [
                    "link",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--upstream",
                    f"{broker.host}:{broker.port}",
                    *spec.cli_args(),
                ],
                log_path,
            )
            self.link = _Link(spec, port, proc, log_path)
            try:
                _wait_listening(port, proc, self.s.online_timeout_s)
            except PointFailed as exc:
                self._stop_link()
                raise PointFailed(f"link ({spec.label()}) did not start: {exc}: {log_reason(log_path)}") from None
            finally:
                self.setup_s += time.monotonic() - t0
        return f"127.0.0.1:{self.link.port}"

    def _stop_tiers(self) -> None:
        if self.tiers is not None:
            for wid, p in self.tiers.procs.items():
                code = _stop(p)
                if code not in (0, None):
                    log.warning("%s exited with status %s", wid, code)
            self.tiers = None

    def _stop_link(self) -> None:
        if self.link is not None:
            _stop(self.link.proc, 5)
            self.link = None

    def close(self) -> None:
        """Stop the link, the tiers, the watcher and the broker."""
        self._stop_link()
        self._stop_tiers()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> SweepSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one point ---------------------------------------------------------------------------------
    def point_config(self, point: Point, run_dir: Path, broker: BrokerProcess, via: str | None) -> dict[str, Any]:
        """The deployment one point runs: the base config on the sweep's broker with the point's device settings."""
        args = argparse.Namespace(
            source=self.s.source,
            threshold=point.threshold,
            edge_threshold=None,
            no_cloud=False,
            split=None,
            codec="fp32",
            influx_url=None,
        )
        raw = demo_config(self.s.base, run_dir, broker, args)
        device = raw["devices"][0]
        device["split"] = point.split
        if point.codec is not None:
            device["codec"] = point.codec
        device["cpu"] = {**(device.get("cpu") or {}), "quota": point.cpu_quota}
        device["via"] = via
        # Every agent of a sweep runs on this host, on one clock: nothing to estimate. And neither clock pings
        # nor bandwidth probe trains may share the emulated link with the frames being measured (an offset
        # estimated through a loaded link is off by half the queueing; a probe train delays the first frames).
        telemetry = raw.get("telemetry") or {}
        raw["telemetry"] = {
            **telemetry,
            "clock": {**(telemetry.get("clock") or {}), "enabled": False},
            "bandwidth": {**(telemetry.get("bandwidth") or {}), "enabled": False},
        }
        if self.s.any_split:
            # Every point resumes the same way, so the tiers' settings do not change between points.
            tier = raw["tiers"][device.get("offload_to", "edge")]
            resume = {"forward": "frame"} if tier.get("forward_to") else {}
            tier.setdefault("split_models", {}).setdefault(device.get("model", "device-small"), resume)
        try:
            DeploymentConfig.model_validate(raw)
        except ValidationError as exc:
            raise PointFailed(f"the point's deployment is not valid: {exc.errors()[0]['msg']}") from None
        return raw

    def run_point(self, point: Point, point_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
        """Run one point and return its result (``status`` ok or failed with a ``reason``); never raises for it."""
        t0 = time.monotonic()
        result: dict[str, Any] = {
            "status": "failed",
            "reason": None,
            "params": point.params(),
            "label": point.label(),
            "frames": self.s.frames,
            "run_dir": str(point_dir),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            result.update(self._measure(point, point_dir, progress))
            result["status"] = "ok"
        except (PointFailed, UserError, RuntimeError, OSError) as exc:  # UserError etc.: e.g. no broker started
            result["reason"] = str(exc) or type(exc).__name__
            self._stop_tiers()  # a clean slate for the next point
            self._stop_link()
        result["wall_s"] = round(time.monotonic() - t0, 3)
        return result

    def _measure(self, point: Point, point_dir: Path, progress: Progress | None) -> dict[str, Any]:
        if point_dir.exists():  # an earlier, unfinished or failed try of this point
            shutil.rmtree(point_dir)
        point_dir.mkdir(parents=True)
        broker = self._ensure_broker()
        via = self._ensure_link(point.link, broker)
        raw = self.point_config(point, point_dir, broker, via)
        self._ensure_tiers(raw, broker)
        cfg_path = point_dir / "deployment.yaml"
        cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        (point_dir / "point.json").write_text(json.dumps(point.model_dump(mode="json"), indent=2) + "\n")
        device_id = str(raw["devices"][0]["id"])
        device_log = point_dir / "device.log"
        self._drain()
        device = spawn_agent(
            ["device", "--config", str(cfg_path), "--id", device_id, "--frames", str(self.s.frames)], device_log
        )
        try:
            self._follow(device, device_id, broker, progress)
        finally:
            if device.poll() is None:
                _stop(device)
        if device.returncode != 0:
            raise PointFailed(f"device exited with status {device.returncode}: {log_reason(device_log)}")
        records = read_records(point_dir)
        metrics = point_metrics(records, self.s.frames)
        if metrics["lost"]:
            raise PointFailed(f"{metrics['lost']} of {self.s.frames} frames have no record (see {device_log})")
        return metrics

    def _drain(self) -> None:
        while True:
            try:
                self.events.get_nowait()
            except queue.Empty:
                return

    def _follow(
        self, device: subprocess.Popen[bytes], device_id: str, broker: BrokerProcess, progress: Progress | None
    ) -> None:
        """Wait for the device to finish, watching the broker, the tiers and the link; a :class:`PointFailed` if not."""
        deadline = time.monotonic() + self.s.point_timeout_s
        health_topic = f"/agents/{device_id}/health"
        while device.poll() is None:
            if time.monotonic() > deadline:
                raise PointFailed(
                    f"timeout: the device did not finish {self.s.frames} frames in {self.s.point_timeout_s:g} s"
                )
            if broker.process.poll() is not None:
                raise PointFailed(f"the broker exited with status {broker.process.returncode} during the point")
            if self.tiers is not None:
                for wid, p in self.tiers.procs.items():
                    if p.poll() is not None:
                        name = self.tiers.ids[wid]
                        reason = log_reason(self.s.root / f"tiers-{self.tiers.generation}" / f"{name}.log")
                        raise PointFailed(f"{wid} exited with status {p.returncode} during the point: {reason}")
            if self.link is not None and self.link.proc.poll() is not None:
                raise PointFailed(
                    f"link exited with status {self.link.proc.returncode} during the point: "
                    f"{log_reason(self.link.log_path)}"
                )
            try:
                topic, payload = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if progress is not None and topic.endswith(health_topic):
                try:
                    progress(int(json.loads(payload).get("answered", 0)))
                except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):  # e.g. Infinity
                    continue


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until something accepts on 127.0.0.1:``port``; a :class:`PointFailed` if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PointFailed(f"exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a port of another process: nothing to wait on but time
    raise PointFailed(f"nothing listened on 127.0.0.1:{port} within {timeout:g} s")
