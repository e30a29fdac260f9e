"""Shared fixtures: the committed CIFAR-10 sample and a per-test cache directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.datasets import SAMPLE_TAR, ImageSet, load_image_set
from agents.telemetry.influxd import InfluxServer
from agents.transport.broker import BrokerProcess, start_mosquitto
from tests.harness import Watcher


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Tests never read or write the user's decoded-image cache.
    monkeypatch.setenv("CASCADE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield


@pytest.fixture(scope="session")
def sample() -> ImageSet:
    """The 1,000 committed CIFAR-10 validation images."""
    return load_image_set(SAMPLE_TAR, use_cache=False)


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE_TAR


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real mosquitto on a free loopback port with the development settings."""
    with start_mosquitto(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def watcher(broker: BrokerProcess) -> Iterator[Watcher]:
    """A client watching every agent's status and health on ``broker``."""
    w = Watcher(broker)
    yield w
    w.close()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A real influxd (1.x) on free loopback ports with a throwaway data directory."""
    server = InfluxServer(tmp_path / "influxdb")
    server.start()
    try:
        yield server
    finally:
        server.stop()
