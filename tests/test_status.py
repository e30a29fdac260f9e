"""``cascade status``: the board's folding of status and health messages, and the command against real agents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from agents.status import StatusBoard, render
from agents.transport.broker import BrokerProcess
from agents.transport.mqtt import LinkSettings, MqttLink
from tests.harness import Watcher, edge_workers, records, spawn, stop, write_config

ROOT = "cascade/t/agents"


def _health(**fields: object) -> bytes:
    return json.dumps({"counters": {}, "connected": True, **fields}).encode()


def test_board_states_rates_and_columns() -> None:
    board = StatusBoard("t", stale_s=5.0)
    board.feed(f"{ROOT}/edge-1/status", b"online", now=0.0)
    board.feed(f"{ROOT}/edge-1/health", _health(role="edge", counters={"answered": 100, "forwarded": 20}), now=1.0)
    board.feed(
        f"{ROOT}/edge-1/health",
        _health(role="edge", queue_depth=3, counters={"answered": 180, "forwarded": 40, "rejected_garbage": 2}),
        now=2.0,
    )
    board.feed(f"{ROOT}/dev1/status", b"online", now=0.0)
    board.feed(
        f"{ROOT}/dev1/health",
        _health(role="device", answered=50, fps=25.0, in_flight=4, aoi_ms=12.5, counters={"offloaded": 9}),
        now=2.0,
    )
    board.feed(f"{ROOT}/cloud-1/status", b"offline", now=0.0)
    board.feed(f"{ROOT}/dev1/health", b"\xff not json", now=2.0)
    board.feed("cascade/other/agents/x/health", _health(role="edge"), now=2.0)  # another deployment: ignored

    rows = {r["agent"]: r for r in board.rows(now=3.0)}
    assert set(rows) == {"dev1", "edge-1", "cloud-1"}
    assert [r["agent"] for r in board.rows(now=3.0)] == ["dev1", "edge-1", "cloud-1"]  # device, tiers, unknown
    edge = rows["edge-1"]
    assert edge["state"] == "online" and edge["load"] == 3 and edge["answered"] == 180 and edge["passed_on"] == 40
    assert edge["fps"] == 100.0  # (180 + 40) - (100 + 20) in one second
    assert edge["rejected"] == 2
    dev = rows["dev1"]
    assert dev["fps"] == 25.0 and dev["answered"] == 50 and dev["passed_on"] == 9 and dev["aoi_ms"] == 12.5
    assert rows["cloud-1"]["state"] == "offline" and rows["cloud-1"]["answered"] is None
    assert board.malformed == 1

    assert board.rows(now=8.0)[0]["state"] == "stale"  # six seconds without health
    board.feed(f"{ROOT}/dev1/status", b"stopped", now=8.0)
    assert board.rows(now=8.0)[0]["state"] == "stopped"
    board.feed(f"{ROOT}/edge-1/health", _health(role="edge", connected=False), now=8.0)
    assert {r["agent"]: r["state"] for r in board.rows(now=8.0)}["edge-1"] == "reconnecting"

    # Whatever else lands on a health topic is counted or shown as "-", never raised on paho's thread.
    for junk in (b"[1, 2]", b'{"counters": []}', b'{"answered": "many"}', b'{"counters": {"answered": {}}}'):
        board.feed(f"{ROOT}/odd/health", junk, now=8.0)
    assert board.malformed == 5 and "odd" not in {r["agent"] for r in board.rows(now=8.0)}
    board.feed(f"{ROOT}/odd/health", _health(role=7, uptime_s="long", fps=True, counters={"rejected_x": "3"}), now=8.0)
    odd = {r["agent"]: r for r in board.rows(now=8.0)}["odd"]
    assert (odd["role"], odd["uptime"], odd["fps"], odd["rejected"]) == ("7", None, None, 0)
    table = render(board.rows(now=8.0)).splitlines()
    assert table[0].split()[:3] == ["agent", "role", "state"]
    assert table[1].split()[:3] == ["dev1", "device", "stopped"]
    assert table[3].split()[:2] == ["cloud-1", "-"]  # no health yet: nothing but its availability


@pytest.mark.parametrize(
    "junk",
    [
        b'{"answered": Infinity}',
        b'{"answered": -Infinity}',
        b'{"answered": NaN}',
        b'{"answered": 1e400}',  # a float beyond the largest: infinity
        b'{"answered": -3}',
        b'{"counters": {"answered": Infinity}}',
        b'{"counters": {"forwarded": 1' + b"0" * 400 + b"}}",  # an int a rate would overflow a float on
        b"[" * 100_000,  # nested past the recursion limit
    ],
)
def test_health_that_is_not_counts_is_counted_not_raised(junk: bytes) -> None:
    board = StatusBoard("t")
    board.feed(f"{ROOT}/evil/health", junk, now=1.0)
    board.feed(f"{ROOT}/evil/health", junk, now=2.0)
    assert board.malformed == 2 and board.rows(now=2.0) == []


def test_the_watcher_survives_an_infinite_count(broker: BrokerProcess) -> None:
    """Through a real broker: after ``"answered": Infinity`` the board still takes the next agent's health."""
    board = StatusBoard("t")
    link = MqttLink("status-test", LinkSettings(host=broker.host, port=broker.port), lambda t, p, _: board.feed(t, p))
    link.subscribe(f"{ROOT}/+/health", qos=0)
    link.start()
    try:
        assert link.wait_connected(10)
        time.sleep(0.3)  # the subscription, made on connect, in place
        publish.single(f"{ROOT}/evil/health", b'{"answered": Infinity}', hostname=broker.host, port=broker.port)
        publish.single(
            f"{ROOT}/dev1/health", _health(role="device", answered=3), hostname=broker.host, port=broker.port
        )
        deadline = time.monotonic() + 5
        while not board.rows() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(r["agent"], r["answered"]) for r in board.rows()] == [("dev1", 3)]
        assert board.malformed == 1
    finally:
        link.close()


def _status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", "status", "--config", str(cfg), "--once", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_command_against_running_agents(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    cfg = write_config(tmp_path, broker)
    with edge_workers(tmp_path, cfg, watcher, count=2):
        device = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", "--frames", "100", name="device")
        assert device.wait(120) == 0
        result = _status(cfg, "--wait", "2.5", "--json", "-")
        assert result.returncode == 0, result.stderr
        rows = {r["agent"]: r for r in json.loads(result.stdout)}
        assert rows["dev1"]["state"] == "stopped"  # retained; its health is not
        for edge in ("edge-1", "edge-2"):
            assert rows[edge]["state"] == "online" and rows[edge]["role"] == "edge"
            assert rows[edge]["seen_s"] is not None and rows[edge]["seen_s"] < 2.5
            assert rows[edge]["rejected"] == 0
        # Every frame the device sent was answered by one of the two (a shared subscription spreads them).
        offloaded = sum(r["outcome"] != "local" for r in records(tmp_path))
        assert offloaded > 0
        assert sum(int(rows[e]["answered"]) for e in ("edge-1", "edge-2")) == offloaded
        text = _status(cfg, "--wait", "1.5", "--expect", "edge-1,edge-2")
        assert text.returncode == 0 and "3 agents, 2 online" in text.stdout and "edge-2" in text.stdout
        check = _status(cfg, "--wait", "1.5", "--expect", "edge-1,dev1,edge-9")
        assert check.returncode == 1 and "not online: dev1 (stopped), edge-9 (never seen)" in check.stderr
    result = _status(cfg, "--wait", "1.5", "--json", "-")
    assert {r["agent"]: r["state"] for r in json.loads(result.stdout)} == {
        "dev1": "stopped",
        "edge-1": "stopped",
        "edge-2": "stopped",
    }
    assert stop(device) == 0


def test_status_says_when_the_broker_is_unreachable(tmp_path: Path, broker: BrokerProcess) -> None:
    cfg = write_config(tmp_path, broker, broker={"host": "127.0.0.1", "port": 1})
    result = _status(cfg, "--wait", "1")
    assert result.returncode == 2
    assert "cannot reach the broker at 127.0.0.1:1" in result.stderr
