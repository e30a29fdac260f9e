"""Clock offsets over MQTT: the four-timestamp arithmetic, refused answers, and a skew recovered end to end."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from agents.datasets import SAMPLE_TAR
from agents.telemetry.clock import ClockEstimate, ClockSync, ntp_sample, pong
from agents.transport.broker import BrokerProcess
from agents.transport.envelope import Envelope, MessageError, decode
from tests.harness import Watcher, records, spawn, stop, write_config


def test_ntp_sample_recovers_offset_with_symmetric_paths() -> None:
    # Peer clock 1000 ns ahead; 300 ns each way; the peer holds the message 50 ns.
    t1 = 10_000
    t2 = t1 + 300 + 1000
    t3 = t2 + 50
    t4 = t3 - 1000 + 300
    s = ntp_sample(t1, t2, t3, t4)
    assert s.offset_ns == 1000 and s.rtt_ns == 600


def test_ntp_sample_error_is_bounded_by_half_the_round_trip() -> None:
    # All delay on the way out: the worst case for the estimate.
    t1, t2, t3 = 0, 900 + 5_000, 900 + 5_000
    t4 = t3 - 5_000
    s = ntp_sample(t1, t2, t3, t4)
    assert abs(s.offset_ns - 5_000) <= s.rtt_ns / 2


def _sync(sent: list[tuple[str, bytes]]) -> ClockSync:
    return ClockSync(
        publish=lambda topic, wire: sent.append((topic, wire)),
        ping_topics={"edge": "cascade/t/edge/clock"},
        reply_topic="cascade/t/agents/dev1/clock",
        agent_id="dev1",
        now_ns=lambda: 0,
        on_estimate=lambda est: None,
        samples=1,
        spacing_s=0.001,
    )


def test_answer_to_no_ping_is_refused() -> None:
    sync = _sync([])
    forged = Envelope({"kind": "clock_pong", "id": "nope", "agent": "edge-1", "t2": 5, "t3": 6})
    with pytest.raises(MessageError, match="answers no ping"):
        sync.on_pong(forged, 10)


def test_malformed_answer_is_refused() -> None:
    sent: list[tuple[str, bytes]] = []
    sync = _sync(sent)
    sync._sent["abc"] = 0  # a ping of ours, as run_round records it
    with pytest.raises(MessageError, match="integers"):
        sync.on_pong(Envelope({"kind": "clock_pong", "id": "abc", "agent": "e", "t2": "x", "t3": 6}), 10)
    with pytest.raises(MessageError, match="lacks"):
        sync.on_pong(Envelope({"kind": "clock_pong", "id": "abc", "agent": "e"}), 10)


def test_a_tier_that_subscribes_late_is_asked_again_within_seconds() -> None:
    # Agents start together: the cloud subscribes to its clock topic only after the first round has gone
    # by, so that round's pings to it are lost (QoS 0). The next round must not wait the whole interval.
    estimates: list[ClockEstimate] = []
    cloud_up = threading.Event()
    now = time.monotonic_ns

    def publish(topic: str, wire: bytes) -> None:
        tier = topic.split("/")[-2]
        if tier == "cloud" and not cloud_up.is_set():
            return  # nobody subscribed yet
        _, reply = pong(decode(wire), f"{tier}-1", tier, now(), now)
        sync.on_pong(decode(reply), now())

    sync = ClockSync(
        publish=publish,
        ping_topics={"edge": "cascade/t/edge/clock", "cloud": "cascade/t/cloud/clock"},
        reply_topic="cascade/t/agents/dev1/clock",
        agent_id="dev1",
        now_ns=now,
        on_estimate=estimates.append,
        samples=2,
        interval_s=30.0,
        spacing_s=0.01,
    )
    sync.start()
    try:
        deadline = time.monotonic() + 5
        while not estimates and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.peer for e in estimates] == ["edge-1"]  # the first round heard the edge only
        cloud_up.set()
        started = time.monotonic()
        while not any(e.peer == "cloud-1" for e in estimates) and time.monotonic() < started + 5:
            time.sleep(0.01)
    finally:
        sync.stop()
    assert any(e.peer == "cloud-1" for e in estimates), "the cloud was not asked again within 5 s (interval 30 s)"


def test_injected_skew_is_recovered_and_one_way_latencies_corrected(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    """An edge whose clock is 250 ms ahead: the device's estimate is within half the round trip of it."""
    skew_ms = 250.0
    device = {
        "id": "dev1",
        "model": "device-small",
        "threshold": 1.0,  # nothing is confident enough: every frame goes to the edge
        "threads": 1,
        "deadline_ms": 5000,
        "window": 8,
        "source": {"kind": "imagefolder", "path": str(SAMPLE_TAR), "rate": "fixed", "fps": 100},
    }
    cfg = write_config(
        tmp_path, broker, devices=[device], telemetry={"health_s": 1, "clock": {"interval_s": 1, "samples": 8}}
    )
    edge = spawn(tmp_path, "edge", "--config", str(cfg), "--id", "edge-1", "--clock-skew-ms", str(skew_ms), name="edge")
    try:
        watcher.wait_status("edge-1", b"online")
        dev = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", "--frames", "300", name="dev")
        assert dev.wait(120) == 0, (tmp_path / "dev.log").read_text()[-3000:]
    finally:
        assert stop(edge) == 0

    clocks = [json.loads(x) for x in (tmp_path / "runs" / "dev1" / "clocks.jsonl").read_text().splitlines()]
    assert len(clocks) >= 2, "a round a second for three seconds"
    for est in clocks:
        assert est["peer"] == "edge-1" and est["peer_role"] == "edge" and est["samples"] >= 1
        assert abs(est["offset_ms"] - skew_ms) <= est["rtt_ms"] / 2, est

    recs = records(tmp_path)
    assert len(recs) == 300 and all(r["outcome"] == "remote" for r in recs)
    corrected = [r for r in recs if r["offsets_ns"].get("edge") is not None]
    assert len(corrected) >= 200, "every frame answered after the first round is corrected"
    for r in corrected:
        s = r["stamps"]
        raw_uplink_ms = (s["edge_receive"] - s["publish"]) / 1e6
        assert raw_uplink_ms > skew_ms - 1  # as the two clocks took them: the skew dominates
        # On the device's clock a one-way trip is not negative beyond the estimate's error, nor over the round trip.
        assert -5.0 < r["uplink_ms"] <= r["round_trip_ms"]
        assert -5.0 < r["downlink_ms"] <= r["round_trip_ms"]
    # The edge's health and run metadata are in its own run directory.
    edge_dir = tmp_path / "runs" / "edge-1"
    run = json.loads((edge_dir / "run.json").read_text())
    assert run["model"] == "edge-medium" and len(run["config_digest"]) == 16
    health = [json.loads(x) for x in (edge_dir / "health.jsonl").read_text().splitlines()]
    assert health and health[-1]["counters"]["answered"] == 300
    assert "cpu_percent" in health[0] and "rss_mb" in health[0]
