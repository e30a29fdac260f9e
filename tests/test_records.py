"""Frame records: JSON and line protocol carry every stamp; summaries count answers once."""

from __future__ import annotations

import json
from pathlib import Path

from agents.records import FrameRecord, RecordWriter, read_records
from agents.summary import summarize


def _record(frame: int, outcome: str = "remote", tier: str = "edge", prediction: int = 3) -> FrameRecord:
    base = 1_700_000_000_000_000_000 + frame * 10_000_000
    return FrameRecord(
        deployment="lab one",
        run="r1",
        device="dev1",
        frame=frame,
        request_id=f"dev1-x-{frame:08d}",
        label=3,
        prediction=prediction,
        confidence=0.93,
        tier=tier,
        exit=1,
        model="edge-medium",
        outcome=outcome,
        bytes_up=2200,
        stamps={
            "capture": base,
            "device_start": base + 100_000,
            "device_end": base + 1_100_000,
            "publish": base + 1_200_000,
            "edge_receive": base + 1_700_000,
            "edge_start": base + 2_000_000,
            "edge_end": base + 4_000_000,
            "reply_publish": base + 4_100_000,
            "device_receive": base + 4_600_000,
            "answer": base + 4_700_000,
        },
    )


def test_line_protocol_has_tags_integer_stamps_and_ms_durations() -> None:
    line = _record(7).to_line_protocol()
    ts = line.rsplit(" ", 1)[1]
    assert line.startswith("frames,deployment=lab\\ one,run=r1,device=dev1,tier=edge,model=edge-medium,exit=1,")
    assert "frame=7i" in line and "correct=1i" in line and "offloaded=" in line and "label=3i" in line
    assert f"capture_ns={_record(7).stamps['capture']}i" in line
    assert "e2e_ms=4.7" in line and "edge_compute_ms=2.0" in line and "uplink_ms=0.5" in line
    assert ts == str(_record(7).stamps["capture"])


def test_writer_and_summary(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "dev1")
    for i in range(10):
        writer.write(
            _record(
                i,
                outcome="local" if i < 6 else "remote",
                tier="device" if i < 6 else "edge",
                prediction=3 if i != 9 else 4,
            )
        )
    writer.write(_record(9, outcome="remote", prediction=4))  # a duplicate must not count twice
    writer.close()
    got = read_records(tmp_path)
    assert len(got) == 11 and all("e2e_ms" in r for r in got)
    s = summarize(got, frames=12)
    assert s["answered"] == 10 and s["lost"] == 2 and s["duplicates"] == 1
    assert s["accuracy"] == 0.9 and s["offload_fraction"] == 0.4
    assert s["by_tier"] == {"device": 0.6, "edge": 0.4, "cloud": 0.0}
    assert s["latency_ms"]["p50"] == 4.7
    lines = (tmp_path / "dev1" / "frames.lp").read_text().splitlines()
    assert (
        len(lines) == 11 and json.loads((tmp_path / "dev1" / "frames.jsonl").read_text().splitlines()[0])["frame"] == 0
    )


def test_writer_flush_late_replies_and_bad_records(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "dev1")
    writer.write(_record(1))
    writer.flush()
    # Visible before close: a reader of a running agent's directory sees what flush promised.
    assert len(read_records(tmp_path)) == 1
    bad = _record(2)
    bad.stamps["answer"] = object()  # type: ignore[assignment]  # cannot be serialised
    writer.write(bad)
    writer.write_late("dev1-x-00000003", "edge", 4, 12.5)
    writer.write(_record(4))
    writer.close()
    assert writer.errors == 1  # counted, and the writer went on
    assert [r["frame"] for r in read_records(tmp_path)] == [1, 4]
    late = json.loads((tmp_path / "dev1" / "late_replies.jsonl").read_text())
    assert late == {"request_id": "dev1-x-00000003", "tier": "edge", "prediction": 4, "after_deadline_ms": 12.5}


def test_writer_batches_by_count_and_by_time(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "dev1", flush_s=3600.0, batch=4)
    for i in range(3):
        writer.write(_record(i))
    assert read_records(tmp_path) == []  # held: fewer than a batch, flush time not reached
    writer.write(_record(3))
    assert [r["frame"] for r in read_records(tmp_path)] == [0, 1, 2, 3]  # a full batch goes out at once
    timed = RecordWriter(tmp_path / "dev2", flush_s=0.0, batch=1000)
    timed.write(_record(9))
    assert [r["frame"] for r in read_records(tmp_path / "dev2")] == [9]  # flush time passed: out now
    assert writer.count == 4 and timed.count == 1
    writer.close()
    timed.close()
