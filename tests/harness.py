"""Helpers for integration tests: deployment files, agents as subprocesses, a watcher on the status topics."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from agents.datasets import SAMPLE_TAR
from agents.transport.broker import BrokerProcess
from agents.transport.mqtt import LinkSettings, MqttLink
from agents.transport.topics import Topics


def write_config(tmp: Path, broker: BrokerProcess, /, **overrides: Any) -> Path:
    """A deployment on ``broker`` using the shipped models; ``overrides`` replace top-level sections."""
    cfg: dict[str, Any] = {
        "deployment": "t",
        "run_dir": str(tmp / "runs"),
        "broker": {"host": broker.host, "port": broker.port, "max_payload_bytes": 65536, "chunk_bytes": 32768},
        "devices": [
            {
                "id": "dev1",
                "model": "device-small",
                "threshold": 0.9,
                "threads": 1,
                "deadline_ms": 3000,
                "window": 8,
                "source": {"kind": "imagefolder", "path": str(SAMPLE_TAR), "shuffle": True, "loop": True},
            }
        ],
        "tiers": {"edge": {"model": "edge-medium", "threads": 1, "max_batch": 16, "max_wait_ms": 2}},
    }
    cfg.update(overrides)
    path = tmp / "deployment.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def spawn(tmp: Path, *args: str, name: str) -> subprocess.Popen[bytes]:
    """Run ``cascade ARGS`` as a subprocess, output to ``tmp/NAME.log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "agents.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env)


@contextmanager
def edge_workers(tmp: Path, cfg: Path, watcher: Watcher, count: int = 1) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` edge workers (edge-1, edge-2, ...), wait until online; stop the living ones afterwards."""
    procs = [
        spawn(tmp, "edge", "--config", str(cfg), "--id", f"edge-{i}", name=f"edge{i}") for i in range(1, count + 1)
    ]
    try:
        for i in range(1, count + 1):
            watcher.wait_status(f"edge-{i}", b"online")
        yield procs
    finally:
        codes = [stop(p) for p in procs if p.poll() is None]
    assert all(code == 0 for code in codes), f"edge exit codes {codes}"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM and wait; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


class Watcher:
    """Subscribes to every agent's status and health topic of deployment ``t``."""

    def __init__(self, broker: BrokerProcess, deployment: str = "t") -> None:
        self.topics = Topics(deployment)
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.health: dict[str, dict[str, Any]] = {}
        self.status: dict[str, bytes] = {}
        self.link = MqttLink(
            f"watcher-{os.getpid()}-{time.monotonic_ns()}",
            LinkSettings(host=broker.host, port=broker.port),
            lambda t, p, _props: self.events.put((t, p)),
        )
        self.link.subscribe(f"{self.topics.root}/agents/+/status")
        self.link.subscribe(f"{self.topics.root}/agents/+/health", qos=0)
        self.link.start()
        assert self.link.wait_connected(10)

    def pump(self, timeout: float) -> None:
        """Take events for up to ``timeout`` seconds (returns at the first one)."""
        try:
            topic, payload = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        agent = topic.split("/")[-2]
        if topic.endswith("/status"):
            self.status[agent] = payload
        else:
            self.health[agent] = json.loads(payload)

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        """Pump events until ``predicate(self)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; status {self.status}")
            self.pump(0.2)

    def wait_status(self, agent: str, value: bytes, timeout: float = 60) -> None:
        """Wait until ``agent``'s retained status is ``value``."""
        self.wait_for(lambda w: w.status.get(agent) == value, timeout, f"{agent} {value!r}")

    def close(self) -> None:
        """Disconnect."""
        self.link.close()


def records(tmp: Path) -> list[dict[str, Any]]:
    """Every frame record under the test's run directory."""
    out: list[dict[str, Any]] = []
    for path in sorted((tmp / "runs").rglob("frames.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return out
