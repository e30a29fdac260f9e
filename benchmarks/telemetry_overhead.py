"""Device frames/s with the InfluxDB sink on against off (target: on ≥ 97% of off).

Both runs are the ``device_throughput`` agent (threshold 0, one torch thread, steady
state from its own records) on the same frames and a private broker; "on" also
ships every record to a real influxd on this host. Runs alternate and each keeps
its best, so a busy machine slows both alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from agents.datasets import SAMPLE_TAR, load_image_set
from agents.telemetry.influxd import InfluxServer
from benchmarks.common import private_broker
from benchmarks.device_throughput import FRAMES, ROUNDS, agent_fps

DB = "bench"


def main() -> None:
    torch.set_num_threads(1)
    load_image_set(SAMPLE_TAR)
    with private_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        influx = InfluxServer(Path(tmp) / "influxdb")
        influx.start()
        try:
            influx.query(f'CREATE DATABASE "{DB}"')
            telemetry = {"influx": {"url": influx.url, "database": DB}}
            off = on = 0.0
            for k in range(ROUNDS):
                off = max(off, agent_fps(broker.port, Path(tmp) / f"off{k}"))
                on = max(on, agent_fps(broker.port, Path(tmp) / f"on{k}", telemetry=telemetry))
            points = influx.count(DB)
        finally:
            influx.stop()
    ratio = on / off
    print(f"telemetry_overhead ({FRAMES} frames, threshold 0, 1 torch thread, {points} points written)")
    print(
        f"  sink off {off:8.1f} frames/s  sink on {on:8.1f} frames/s  ratio {ratio:5.3f} (target >= 0.97)  "
        f"{'PASS' if ratio >= 0.97 else 'FAIL'}"
    )
    if points != ROUNDS * FRAMES:
        raise RuntimeError(f"influx holds {points} points, expected {ROUNDS * FRAMES}")


if __name__ == "__main__":
    main()
