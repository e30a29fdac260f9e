"""Shared pieces of the benchmarks: a private broker and percentile helpers."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agents.transport.broker import BrokerProcess, start_mosquitto


@contextmanager
def private_broker() -> Iterator[BrokerProcess]:
    """mosquitto with the development settings on a free loopback port, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp, start_mosquitto(Path(tmp)) as broker:
        yield broker


def median_ms(samples_ns: list[int]) -> float:
    """Median of nanosecond samples, in milliseconds."""
    return statistics.median(samples_ns) / 1e6
