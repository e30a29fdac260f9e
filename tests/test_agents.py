"""Agents as subprocesses against a real mosquitto, shipped models and real images."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from agents.transport.broker import BrokerProcess
from agents.transport.envelope import MAGIC, Envelope, decode, encode
from agents.transport.images import encode_image
from agents.transport.mqtt import LinkSettings, MqttLink
from tests.harness import Watcher, edge_workers, records, spawn, write_config


def _answers(tmp: Path) -> Counter[str]:
    return Counter(r["request_id"] for r in records(tmp))


def _device(tmp: Path, cfg: Path, frames: int) -> subprocess.Popen[bytes]:
    return spawn(tmp, "device", "--config", str(cfg), "--id", "dev1", "--frames", str(frames), name="device")


def _one_answer_each(tmp: Path, frames: int) -> None:
    answers = _answers(tmp)
    assert len(answers) == frames and set(answers.values()) == {1}


def test_every_frame_gets_exactly_one_answer(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    cfg = write_config(tmp_path, broker)
    with edge_workers(tmp_path, cfg, watcher):
        assert _device(tmp_path, cfg, 200).wait(240) == 0
    _one_answer_each(tmp_path, 200)
    outcomes = Counter(r["outcome"] for r in records(tmp_path))
    assert outcomes["remote"] > 0 and outcomes["local"] > 0, outcomes
    remote = [r for r in records(tmp_path) if r["outcome"] == "remote"]
    assert all(r["tier"] == "edge" and r["model"] == "edge-medium" for r in remote)
    assert {r["exit"] for r in remote} == {1}  # no edge threshold: every answer from its final exit (index 1)
    assert all({"capture", "publish", "edge_receive", "edge_end", "device_receive"} <= set(r["stamps"]) for r in remote)


def _bad_messages() -> list[bytes]:
    good = Envelope({"id": "x1", "kind": "request", "reply_to": "cascade/t/device/dev1/results"})
    raw_header, _ = encode_image(np.zeros((32, 32, 3), np.uint8), "raw")
    big_png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(big_png, format="PNG")
    body = json.dumps({"id": "v", "nbytes": 0}).encode()
    png = io.BytesIO()
    Image.fromarray((np.arange(32 * 32 * 3).reshape(32, 32, 3) % 251).astype(np.uint8)).save(png, format="PNG")
    data = png.getvalue()
    at = data.index(b"IDAT") - 4  # the chunk's length, 8 short: Pillow reads a chunk type out of the data
    broken_png = data[:at] + struct.pack(">I", struct.unpack(">I", data[at : at + 4])[0] - 8) + data[at + 4 :]
    return [
        b"\x00garbage\xff" * 7,
        struct.pack(">3sBI", MAGIC, 99, len(body)) + body,  # unknown schema version
        encode(Envelope({**good.header, "encoding": "png"}, b"\x89PNG" + b"\0" * 50))[:-20],  # truncated
        encode(Envelope({**good.header, "encoding": "png"}, b"\0" * 100_000)),  # over max_payload_bytes
        encode(Envelope({**good.header, **raw_header, "shape": [32, 32, 4]}, b"\0" * 32 * 32 * 4)),  # wrong shape
        encode(Envelope({**good.header, **raw_header, "dtype": "float32"}, b"\0" * 32 * 32 * 3)),  # wrong dtype
        encode(Envelope({**good.header, "encoding": "png"}, big_png.getvalue())),  # wrong image size
        encode(Envelope({**good.header, "encoding": "jpeg"}, b"not a jpeg at all")),
        encode(Envelope({"id": "x2", "kind": "request"}, b"")),  # no reply_to
        # Pillow raises SyntaxError("broken PNG file") for this one, which no decoder check named.
        encode(Envelope({**good.header, "encoding": "png"}, broken_png)),
        # Answers must go to a device's results topic: not to a wildcard, not anywhere else.
        encode(Envelope({**good.header, "encoding": "png", "reply_to": "cascade/t/device/+/results"}, data)),
        encode(Envelope({**good.header, "encoding": "png", "reply_to": "cascade/t/edge/requests"}, data)),
    ]


def test_bad_input_is_rejected_counted_and_valid_traffic_flows(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    cfg = write_config(tmp_path, broker)
    with edge_workers(tmp_path, cfg, watcher) as (edge,):
        bad = _bad_messages()
        for payload in bad:
            watcher.link.publish("cascade/t/edge/requests", payload, qos=1)
        ping = {"id": "p1", "kind": "clock_ping", "agent": "x", "reply_to": "cascade/t/agents/+/clock"}
        watcher.link.publish("cascade/t/edge/clock", encode(Envelope(ping)), qos=0)
        device = _device(tmp_path, cfg, 150)
        watcher.wait_status("dev1", b"online")
        for payload in [b"junk", *bad[:2], encode(Envelope({"id": "nobody", "kind": "result"}))]:
            watcher.link.publish("cascade/t/device/dev1/results", payload, qos=1)
        assert device.wait(240) == 0
        assert edge.poll() is None, "the edge died on bad input"
        _one_answer_each(tmp_path, 150)

        def rejected(w: Watcher, agent: str) -> int:
            counters = w.health.get(agent, {}).get("counters", {})
            return sum(v for k, v in counters.items() if k.startswith("rejected_"))

        watcher.wait_for(lambda w: rejected(w, "edge-1") >= len(bad), 30, "edge rejections")
        edge_counters = watcher.health["edge-1"]["counters"]
        for kind in ("garbage", "version", "truncated", "oversized", "shape", "image", "header"):
            assert edge_counters.get(f"rejected_{kind}", 0) >= 1, (kind, edge_counters)
        assert edge_counters["rejected_image"] >= 2 and edge_counters["rejected_header"] >= 4, edge_counters
        assert edge_counters["rejected_unexpected"] == 0, edge_counters  # each was caught by its own check
        watcher.wait_for(lambda w: rejected(w, "dev1") >= 4, 30, "device rejections")


def test_sigterm_publishes_stopped_and_exits_zero(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    cfg = write_config(tmp_path, broker)
    with edge_workers(tmp_path, cfg, watcher) as (edge,):
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(5) == 0
        watcher.wait_status("edge-1", b"stopped", timeout=5)


def test_killed_edge_leaves_offline_and_the_survivor_carries(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    cfg = write_config(tmp_path, broker)
    with edge_workers(tmp_path, cfg, watcher, count=2) as (first, _second):
        device = _device(tmp_path, cfg, 400)
        watcher.wait_for(lambda w: w.health.get("dev1", {}).get("answered", 0) >= 100, 120, "100 answers")
        os.kill(first.pid, signal.SIGKILL)
        watcher.wait_status("edge-1", b"offline", timeout=60)  # last will
        assert device.wait(300) == 0
    _one_answer_each(tmp_path, 400)
    late = [r for r in records(tmp_path) if r["frame"] >= 300 and r["outcome"] == "remote"]
    assert late, "no frame was answered by the surviving edge after the kill"


def test_broker_restart_mid_run_every_frame_answered_once(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    cfg = write_config(tmp_path, broker)
    with edge_workers(tmp_path, cfg, watcher) as (edge,):
        device = _device(tmp_path, cfg, 300)
        watcher.wait_for(lambda w: w.health.get("dev1", {}).get("answered", 0) >= 80, 120, "80 answers")
        broker.restart()
        assert device.wait(300) == 0
        assert edge.poll() is None
    _one_answer_each(tmp_path, 300)
    after = [r for r in records(tmp_path) if r["outcome"] == "remote" and r["frame"] >= 250]
    assert after, "no remote answer after the broker restart: the agents did not reconnect and resubscribe"


def test_passed_deadline_gives_the_local_answer(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    cfg = write_config(tmp_path, broker)
    cfg.write_text(cfg.read_text().replace("deadline_ms: 3000", "deadline_ms: 1"))
    with edge_workers(tmp_path, cfg, watcher):
        assert _device(tmp_path, cfg, 100).wait(240) == 0
    _one_answer_each(tmp_path, 100)
    got = records(tmp_path)
    timeouts = [r for r in got if r["outcome"] == "timeout"]
    assert timeouts and all(r["tier"] == "device" and r["prediction"] >= 0 for r in timeouts)
    assert not [r for r in got if r["outcome"] == "remote"]


def test_a_forged_late_reply_is_rejected_and_the_device_goes_on(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    cfg = write_config(tmp_path, broker)
    cfg.write_text(cfg.read_text().replace("deadline_ms: 3000", "deadline_ms: 1"))  # every reply comes late
    forger = MqttLink(f"forger-{os.getpid()}", LinkSettings(host=broker.host, port=broker.port), lambda *_: None)

    def forge(topic: str, payload: bytes, _props: object) -> None:
        env = decode(payload)
        if env.header.get("kind") == "result":  # the same reply again, its prediction unusable
            forged = Envelope({**env.header, "prediction": None}, stamps=env.stamps)
            forger.publish(topic, encode(forged), qos=1)

    copier = MqttLink(f"copier-{os.getpid()}", LinkSettings(host=broker.host, port=broker.port), forge)
    copier.subscribe("cascade/t/device/dev1/results")
    for link in (forger, copier):
        link.start()
        assert link.wait_connected(10)
    try:
        with edge_workers(tmp_path, cfg, watcher):
            assert _device(tmp_path, cfg, 100).wait(240) == 0
        _one_answer_each(tmp_path, 100)
        watcher.wait_for(lambda w: w.health.get("dev1", {}).get("done"), 30, "the device's last health")
        counters = watcher.health["dev1"]["counters"]
        assert counters["late_replies"] >= 1 and counters["rejected_header"] >= 1, counters
        assert counters["rejected_unexpected"] == 0, counters
    finally:
        copier.close()
        forger.close()
