"""The InfluxDB sink against a real influxd: points land, outages spool to disk, restarts lose nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.config import DeploymentConfig
from agents.datasets import SAMPLE_TAR
from agents.records import FrameRecord
from agents.telemetry.influx import InfluxSink, InfluxTarget, influx_target
from agents.telemetry.influxd import InfluxServer
from agents.transport.broker import BrokerProcess
from tests.harness import Watcher, spawn, write_config
from tests.v2proxy import V2Proxy

DB = "cascade_test"


def _lines(start: int, n: int) -> list[str]:
    """Line protocol of ``n`` frame records with distinct capture times (one point each)."""
    out = []
    for i in range(start, start + n):
        capture = 1_795_000_000_000_000_000 + i * 1_000_000
        r = FrameRecord(
            deployment="t",
            run="r1",
            device="dev1",
            frame=i,
            request_id=f"dev1-x-{i:08d}",
            label=i % 10,
            prediction=i % 7,
            confidence=0.5,
            tier="device",
            exit=0,
            model="device-small",
            outcome="local",
            stamps={"capture": capture, "device_start": capture + 1000, "device_end": capture + 900_000},
        )
        r.stamps["answer"] = capture + 1_000_000
        out.append(r.to_line_protocol())
    return out


def _wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _sink(server: InfluxServer, spool: Path, **kw: float) -> InfluxSink:
    return InfluxSink(InfluxTarget(server.url, DB), spool, flush_s=0.2, max_backoff_s=1.0, **kw)  # type: ignore[arg-type]


def test_points_land_and_read_back(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    sink = _sink(influx, tmp_path / "spool")
    sink.submit(_lines(0, 1200))
    sink.close()
    assert sink.written == 1200 and sink.dropped == 0 and sink.backlog == 0
    assert influx.count(DB) == 1200
    got = influx.query('SELECT "frame", "prediction", "e2e_ms" FROM "frames" WHERE "frame" = 7', DB)
    _, frame, prediction, e2e = got["results"][0]["series"][0]["values"][0]
    assert (frame, prediction, e2e) == (7, 0, 1.0)


def test_an_outage_spools_to_disk_and_nothing_is_lost(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    sink = _sink(influx, tmp_path / "spool", batch_lines=100)
    sink.submit(_lines(0, 300))
    _wait(lambda: sink.written == 300, 20, "the first points")
    influx.stop()
    for k in range(10):  # arriving while the database is away
        sink.submit(_lines(300 + 100 * k, 100))
        time.sleep(0.05)
    _wait(lambda: sink.backlog > 0, 20, "spooled batches")
    assert sink.errors > 0
    influx.start()
    sink.submit(_lines(1300, 200))
    _wait(lambda: sink.written == 1500 and sink.backlog == 0, 60, "the spool to drain")
    sink.close()
    assert sink.dropped == 0 and influx.count(DB) == 1500


def test_the_spool_survives_an_agent_restart(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    influx.stop()
    first = _sink(influx, tmp_path / "spool")
    first.submit(_lines(0, 400))
    first.close(timeout_s=1.0)  # the database is away: the points stay on disk
    assert first.written == 0 and first.backlog >= 1
    influx.start()
    second = _sink(influx, tmp_path / "spool")  # a new process with the same spool directory
    second.submit(_lines(400, 100))
    second.close()
    assert second.written == 500 and second.backlog == 0 and influx.count(DB) == 500


def test_a_malformed_batch_is_counted_not_retried_forever(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    sink = _sink(influx, tmp_path / "spool")
    sink.submit(["frames,device=d1 this is not line protocol"])
    _wait(lambda: sink.dropped == 1, 10, "the refusal")
    sink.submit(_lines(0, 10))
    sink.close()
    assert sink.written == 10 and influx.count(DB) == 10
    # A field whose type conflicts with what the database stored: 1.x writes the rest of the batch.
    sink = _sink(influx, tmp_path / "spool")
    sink.submit([*_lines(10, 5), 'frames,device=d1 frame="a string" 1795000000999000000'])
    sink.close()
    assert (sink.written, sink.dropped) == (5, 1) and influx.count(DB) == 15


def test_a_full_spool_drops_its_oldest_batches_and_counts_them(tmp_path: Path) -> None:
    nowhere = InfluxServer(tmp_path / "never-started")  # a port nothing listens on
    sink = InfluxSink(
        InfluxTarget(nowhere.url, DB, timeout_s=0.5),
        tmp_path / "spool",
        batch_lines=100,
        flush_s=0.05,
        spool_max_bytes=4096,
    )
    for k in range(20):
        sink.submit(_lines(100 * k, 100))
        time.sleep(0.06)
    sink.close(timeout_s=1.0)
    on_disk = sum(int(p.name.split(".")[0].split("-")[1]) for p in (tmp_path / "spool").glob("*.lp.gz"))
    assert sink.dropped > 0 and on_disk + sink.dropped == 2000
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.lp.gz")) <= 4096 + 3000


def test_device_records_reach_influx_through_a_30_s_outage(
    tmp_path: Path, influx: InfluxServer, broker: BrokerProcess, watcher: Watcher
) -> None:
    frames = 2000
    influx.query(f'CREATE DATABASE "{DB}"')
    device = {
        "id": "dev1",
        "threshold": 0.0,  # every frame answered on the device: this is about the records' way to InfluxDB
        "threads": 1,
        "source": {"kind": "imagefolder", "path": str(SAMPLE_TAR), "loop": True, "rate": "fixed", "fps": 50},
    }
    cfg = write_config(
        tmp_path, broker, devices=[device], telemetry={"influx": {"url": influx.url, "database": DB, "flush_s": 0.5}}
    )
    proc = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", "--frames", str(frames), name="device")
    _wait(lambda: influx.count(DB) > 0, 30, "the first points")
    influx.stop()
    time.sleep(30)  # frames keep coming; their points wait on disk
    assert proc.poll() is None, "the device should still be running"
    influx.start()
    assert proc.wait(120) == 0
    assert influx.count(DB) == frames  # exactly: none lost, none twice
    health = (tmp_path / "device.log").read_text()
    assert "influx" in health.lower()  # the outage was reported


def test_v2_api_through_influxdb_client(tmp_path: Path, influx: InfluxServer) -> None:
    """The 2.x native path (influxdb-client, /api/v2/write, token, gzip) against the real server.

    influxd 1.6.7 predates /api/v2, so a test-only proxy (tests/v2proxy.py) rewrites the
    path to /write and checks the token and org the way 2.x does; the points land in the
    real database.
    """
    influx.query(f'CREATE DATABASE "{DB}"')
    proxy = V2Proxy(influx.url, token="s3cret", org="lab")
    try:
        target = InfluxTarget(proxy.url, DB, api="v2", org="lab", token="s3cret")
        sink = InfluxSink(target, tmp_path / "spool", flush_s=0.2, max_backoff_s=1.0)
        sink.submit(_lines(0, 700))
        sink.close()
        assert sink.written == 700 and sink.dropped == 0 and sink.backlog == 0
        assert influx.count(DB) == 700
        sent = proxy.requests[0]
        assert sent["path"] == "/api/v2/write" and sent["query"]["precision"] == "ns"
        assert sent["headers"]["Authorization"] == "Token s3cret"
        assert sent["headers"].get("Content-Encoding") == "gzip"

        # A wrong token is kept on disk, not lost, until the credentials are fixed.
        bad = InfluxSink(InfluxTarget(proxy.url, DB, api="v2", org="lab", token="wrong"), tmp_path / "spool2")
        bad.submit(_lines(700, 50))
        bad.close(timeout_s=2)
        assert bad.written == 0 and bad.dropped == 0 and bad.backlog == 1 and bad.errors >= 1
        fixed = InfluxSink(InfluxTarget(proxy.url, DB, api="v2", org="lab", token="s3cret"), tmp_path / "spool2")
        fixed.close()
        assert fixed.written == 50 and influx.count(DB) == 750
    finally:
        proxy.close()


def test_v2_config_needs_bucket_and_org() -> None:
    base = {"deployment": "t", "telemetry": {"influx": {"url": "http://x:8086", "api": "v2", "bucket": "b"}}}
    with pytest.raises(ValidationError, match="api v2 needs 'bucket' and 'org'"):
        DeploymentConfig.model_validate(base)
    base["telemetry"]["influx"]["org"] = "lab"  # type: ignore[index]
    cfg = DeploymentConfig.model_validate(base)
    assert cfg.telemetry.influx is not None and influx_target(cfg.telemetry.influx).database == "b"
    with pytest.raises(ValidationError, match="api v1 needs 'database'"):
        DeploymentConfig.model_validate({"deployment": "t", "telemetry": {"influx": {"url": "http://x:8086"}}})
