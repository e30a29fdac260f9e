"""Uplink bandwidth timed at the receiver: the arithmetic, refused answers, and estimates from real agents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.datasets import SAMPLE_TAR
from agents.telemetry.bandwidth import BandwidthEstimate, BandwidthProbe, ProbeReceiver
from agents.transport.broker import BrokerProcess
from agents.transport.envelope import Envelope, MessageError, decode
from tests.harness import Watcher, records, spawn, stop, write_config


def _pair(size: int = 1000, messages: int = 5) -> tuple[BandwidthProbe, ProbeReceiver, list[BandwidthEstimate]]:
    """A probe and a receiver wired back to back, without a broker (the arrival times are the test's)."""
    got: list[BandwidthEstimate] = []
    probe_out: list[tuple[str, bytes]] = []
    probe = BandwidthProbe(
        publish=lambda t, w: probe_out.append((t, w)),
        topic="cascade/t/edge/clock",
        reply_topic="cascade/t/agents/dev1/clock",
        agent_id="dev1",
        on_estimate=got.append,
        messages=messages,
        size=size,
    )
    receiver = ProbeReceiver("edge-1", "edge", lambda t, w: probe.on_result(decode(w)))
    probe.send_train()
    # Probes arrive 1 ms apart at the receiver: (messages - 1) * size bytes in (messages - 1) ms.
    for i, (_, wire) in enumerate(probe_out):
        receiver.on_probe(decode(wire), 1_000_000_000 + i * 1_000_000)
    return probe, receiver, got


def test_rate_is_bytes_after_the_first_over_the_receivers_time() -> None:
    probe, _, got = _pair(size=1000, messages=5)
    assert len(got) == 1
    est = got[0]
    assert est.bytes == 4000 and est.messages == 5 and est.peer == "edge-1"
    assert est.mbit_s == pytest.approx(4000 * 8 / 0.004 / 1e6)  # 8 Mbit/s
    assert probe.latest_mbit_s == pytest.approx(8.0)


def test_answers_to_no_train_of_ours_are_refused() -> None:
    probe, _, _ = _pair()
    forged = Envelope({"kind": "bw_result", "id": "nope", "bytes": 10, "ns": 10, "messages": 2})
    with pytest.raises(MessageError, match="no train of ours"):
        probe.on_result(forged)


def test_malformed_probe_is_refused() -> None:
    receiver = ProbeReceiver("edge-1", "edge", lambda t, w: None)
    with pytest.raises(MessageError, match="train"):
        receiver.on_probe(Envelope({"kind": "bw_probe", "id": "x", "seq": "0"}), 1)


def test_agents_estimate_the_uplink_and_records_carry_it(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    device = {
        "id": "dev1",
        "model": "device-small",
        "threshold": 1.0,  # every frame offloaded
        "threads": 1,
        "window": 8,
        "source": {"kind": "imagefolder", "path": str(SAMPLE_TAR), "rate": "fixed", "fps": 100},
    }
    telemetry = {"bandwidth": {"interval_s": 1, "messages": 4, "bytes": 16384}}
    cfg = write_config(tmp_path, broker, devices=[device], telemetry=telemetry)
    edge = spawn(tmp_path, "edge", "--config", str(cfg), "--id", "edge-1", name="edge")
    try:
        watcher.wait_status("edge-1", b"online")
        dev = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", "--frames", "200", name="dev")
        assert dev.wait(120) == 0, (tmp_path / "dev.log").read_text()[-3000:]
    finally:
        assert stop(edge) == 0
    lines = (tmp_path / "runs" / "dev1" / "bandwidth.jsonl").read_text().splitlines()
    estimates = [json.loads(x) for x in lines]
    assert estimates and all(e["peer"] == "edge-1" and e["mbit_s"] > 0 and e["messages"] >= 2 for e in estimates)
    with_rate = [r for r in records(tmp_path) if r.get("uplink_mbit") is not None]
    assert len(with_rate) >= 100, "frames sent after the first estimate carry it"
    health = [json.loads(x) for x in (tmp_path / "runs" / "dev1" / "health.jsonl").read_text().splitlines()]
    assert health[-1]["uplink_mbit"] > 0
    edge_health = [json.loads(x) for x in (tmp_path / "runs" / "edge-1" / "health.jsonl").read_text().splitlines()]
    assert not any(v for k, v in edge_health[-1]["counters"].items() if k.startswith("rejected_"))


def test_estimate_matches_an_emulated_link(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    """Behind a 5 Mbit/s `cascade link` the device's estimate is within 15% of it, timed on the edge alone."""
    from agents.link import LinkProxy, LinkShape

    with LinkProxy(f"{broker.host}:{broker.port}", LinkShape(rate_mbit=5.0, delay_ms=2.0)) as link:
        device = {
            "id": "dev1",
            "model": "device-small",
            "threshold": 0.0,  # everything local: the probes alone cross the link
            "threads": 1,
            "via": link.address,
            "source": {"kind": "imagefolder", "path": str(SAMPLE_TAR), "rate": "fixed", "fps": 100},
        }
        telemetry = {"bandwidth": {"interval_s": 1, "messages": 5, "bytes": 16384}}
        cfg = write_config(tmp_path, broker, devices=[device], telemetry=telemetry)
        edge = spawn(tmp_path, "edge", "--config", str(cfg), "--id", "edge-1", name="edge")
        try:
            watcher.wait_status("edge-1", b"online")
            dev = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", "--frames", "300", name="dev")
            assert dev.wait(120) == 0, (tmp_path / "dev.log").read_text()[-3000:]
        finally:
            assert stop(edge) == 0
        assert link.stats().bytes_up > 3 * 4 * 16384
    lines = (tmp_path / "runs" / "dev1" / "bandwidth.jsonl").read_text().splitlines()
    rates = sorted(json.loads(x)["mbit_s"] for x in lines)
    assert len(rates) >= 2
    median = rates[len(rates) // 2]
    assert abs(median - 5.0) <= 0.75, rates
