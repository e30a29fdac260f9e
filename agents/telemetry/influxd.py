"""A throwaway InfluxDB 1.x (Debian's ``influxd``) on free loopback ports: for tests, benchmarks and the demo."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import UserError
from agents.telemetry.influx import InfluxTarget, influx_query
from agents.transport.broker import free_port


def influxd_binary() -> str | None:
    """Path of ``influxd`` (``make test`` installs Debian's ``influxdb`` package when it is missing)."""
    return shutil.which("influxd") or ("/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None)


@dataclass
class InfluxServer:
    """One influxd with its data in ``workdir``; stop and start it again to simulate an outage."""

    workdir: Path
    port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The HTTP API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start influxd and wait until ``/ping`` answers."""
        binary = influxd_binary()
        if binary is None:
            raise UserError("influxd is not installed: `make system-deps` (or apt-get install influxdb) installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "influxdb.conf"
        conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{self.workdir}/meta"\n'
            f'[data]\n  dir = "{self.workdir}/data"\n  wal-dir = "{self.workdir}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        log = (self.workdir / "influxd.log").open("ab")
        self.process = subprocess.Popen([binary, "run", "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"influxd exited: {(self.workdir / 'influxd.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                    if resp.status == 204:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("influxd did not answer /ping in time")

    def stop(self) -> None:
        """Stop influxd (the data stays for the next start)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def query(self, q: str, db: str | None = None) -> Any:
        """Run an InfluxQL statement; the JSON answer."""
        return influx_query(InfluxTarget(self.url, db or ""), q, db)

    def count(self, db: str, measurement: str = "frames", field_name: str = "frame") -> int:
        """How many points ``measurement`` holds (counted on one integer field every point has)."""
        series = self.query(f'SELECT count("{field_name}") FROM "{measurement}"', db)["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0
