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


def test_lines_influx_cannot_parse_are_counted_as_dropped_not_written(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    # 1.x writes the rest of the batch and answers "partial write: unable to parse ... dropped=0": the lines
    # it could not parse are not in its count. Long tags make the answer longer than any cut of it.
    long = "x" * 400
    bad = [f"frames,device={long}{k} frame=nonsense {1_795_000_000_000_000_000 + k}" for k in range(3)]
    sink = _sink(influx, tmp_path / "spool")
    sink.submit([*_lines(0, 100), *bad])
    sink.close()
    assert (sink.written, sink.dropped) == (100, 3) and influx.count(DB) == 100


def test_a_frame_whose_confidence_is_not_a_number_still_lands(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    nan_line = _record_line(confidence=float("nan"))
    assert "confidence" not in nan_line and "nan" not in nan_line
    sink = _sink(influx, tmp_path / "spool")
    sink.submit([nan_line, _record_line(confidence=0.75, frame=1)])
    sink.close()
    assert (sink.written, sink.dropped) == (2, 0) and influx.count(DB) == 2


def _record_line(confidence: float, frame: int = 0, **names: str) -> str:
    capture = 1_795_000_000_000_000_000 + frame
    r = FrameRecord(
        deployment=names.get("deployment", "t"),
        run="r1",
        device=names.get("device", "dev1"),
        frame=frame,
        request_id=f"dev1-x-{frame:08d}",
        label=None,
        prediction=3,
        confidence=confidence,
        tier="device",
        exit=0,
        model=names.get("model", "device-small"),
        outcome="local",
        stamps={"capture": capture, "answer": capture + 1000},
    )
    return r.to_line_protocol()


def test_tag_values_round_trip_or_change_as_documented(tmp_path: Path, influx: InfluxServer) -> None:
    influx.query(f'CREATE DATABASE "{DB}"')
    # What a model name may hold, and what InfluxDB 1.x then stores: a backslash it would read as an
    # escape (before a space, comma or equals sign, or last) becomes '/', a control character a space.
    names = {
        "with space": "with space",
        "a,b=c": "a,b=c",
        "back\\slash": "back\\slash",
        "ends\\": "ends/",
        "x\\ y": "x/ y",
        "new\nline": "new line",
        "é✓": "é✓",
    }
    lines = [_record_line(0.5, frame, model=name) for frame, name in enumerate(names)]
    sink = _sink(influx, tmp_path / "spool")
    sink.submit(lines)
    sink.close()
    assert (sink.written, sink.dropped) == (len(names), 0)
    got = influx.query('SELECT "frame", "model" FROM "frames"', DB)["results"][0]["series"][0]["values"]
    assert sorted(model for _, _, model in got) == sorted(names.values())


def test_the_sink_outlives_an_answer_that_is_not_http(tmp_path: Path, influx: InfluxServer) -> None:
    import socket
    import threading

    garbage = socket.create_server(("127.0.0.1", 0))
    port = garbage.getsockname()[1]

    def answer_garbage() -> None:
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not HTTP\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        sink = InfluxSink(
            InfluxTarget(f"http://127.0.0.1:{port}", DB, timeout_s=1.0),
            tmp_path / "spool",
            flush_s=0.05,
            max_backoff_s=0.2,
        )
        sink.submit(_lines(0, 50))
        _wait(lambda: sink.errors >= 2, 10, "retries")
        assert sink._thread.is_alive() and sink.dropped == 0
        sink.close(timeout_s=0.5)
    finally:
        garbage.close()
    assert sink.backlog >= 1 and sink.spooled == 50
    # After close, late lines go to the spool too; the next start sends everything to a real database.
    sink.submit(_lines(50, 10))
    influx.query(f'CREATE DATABASE "{DB}"')
    second = _sink(influx, tmp_path / "spool")
    second.close()
    assert second.written == 60 and second.backlog == 0 and influx.count(DB) == 60


def test_a_spool_file_a_crash_left_unnamed_is_recovered_or_counted(tmp_path: Path, influx: InfluxServer) -> None:
    import gzip

    influx.query(f'CREATE DATABASE "{DB}"')
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "000000000001-40.lp.tmp").write_bytes(gzip.compress(("\n".join(_lines(0, 40)) + "\n").encode()))
    (spool / "000000000002-30.lp.tmp").write_bytes(gzip.compress(("\n".join(_lines(40, 30)) + "\n").encode())[:50])
    sink = _sink(influx, spool)
    sink.close()
    assert (sink.written, sink.dropped) == (40, 30) and influx.count(DB) == 40
    assert not list(spool.glob("*.tmp"))


def test_an_influx_url_without_a_scheme_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="expected http:// or https:// and a host"):
        DeploymentConfig.model_validate(
            {"deployment": "t", "telemetry": {"influx": {"url": "influxhost:8086", "database": "d"}}}
        )
