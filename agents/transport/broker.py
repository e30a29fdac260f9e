"""Start a private broker on a free loopback port (tests, benchmarks and the demo).

mosquitto when it is installed: the generated configuration is
``broker/mosquitto.conf``'s settings with the listener moved to the chosen port and
persistence inside the given directory, so the committed development config is
exactly what the tests exercise. Otherwise, for the demo only, the embedded
pure-Python broker amqtt (MQTT 3.1.1, no shared subscriptions), from the
``embedded`` extra.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agents.errors import UserError

DEV_CONF = Path(__file__).resolve().parents[2] / "broker" / "mosquitto.conf"
_FALLBACK_SETTINGS = (
    "per_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\n"
    "max_packet_size 16777216\npersistence true\nmax_queued_messages 10000\n"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable, if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def broker_config(port: int, workdir: Path) -> str:
    """The development config with the listener on ``port`` and persistence under ``workdir``."""
    base = DEV_CONF.read_text() if DEV_CONF.exists() else _FALLBACK_SETTINGS
    keep = [
        line
        for line in base.splitlines()
        if not line.startswith(("listener", "persistence_location", "log_dest", "pid_file"))
    ]
    keep += [f"listener {port} 127.0.0.1", f"persistence_location {workdir}/", f"log_dest file {workdir}/mosquitto.log"]
    return "\n".join(keep) + "\n"


@dataclass
class BrokerProcess:
    """A running private broker; ``stop`` it (or use it as a context manager)."""

    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    kind: str = "mosquitto"

    @property
    def protocol(self) -> str:
        """The MQTT version clients should speak to it."""
        return "5" if self.kind == "mosquitto" else "3.1.1"

    @property
    def shared_subscriptions(self) -> bool:
        """Whether ``$share/<group>/...`` subscriptions work on it."""
        return self.kind == "mosquitto"

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port (persistence keeps queued QoS 1 messages)."""
        self.stop()
        self.process = _launch(self.workdir, self.port, timeout, self.kind)

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # polling a port we do not own; nothing to wait on instead
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout} s")


def _launch(workdir: Path, port: int, timeout: float, kind: str = "mosquitto") -> subprocess.Popen[bytes]:
    if kind == "amqtt":
        conf = workdir / "amqtt.yaml"
        conf.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        cmd = [sys.executable, "-c", "from amqtt.scripts.broker_script import main; main()", "-c", str(conf)]
    else:
        binary = mosquitto_binary()
        if binary is None:
            raise UserError("mosquitto is not installed: apt-get install mosquitto (or point the config at a broker)")
        conf = workdir / "mosquitto.conf"
        conf.write_text(broker_config(port, workdir))
        cmd = [binary, "-c", str(conf)]
    log = (workdir / f"{kind}.out").open("wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, timeout)
    except RuntimeError:
        process.kill()
        raise
    return process


def start_mosquitto(workdir: Path, port: int | None = None, timeout: float = 10.0) -> BrokerProcess:
    """Start mosquitto with the development settings on ``port`` (a free one by default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = port or free_port()
    return BrokerProcess("127.0.0.1", chosen, workdir, _launch(workdir, chosen, timeout))


def start_any_broker(workdir: Path, timeout: float = 20.0) -> BrokerProcess:
    """Start mosquitto if installed, else the embedded amqtt broker; a clear error if neither is there."""
    workdir.mkdir(parents=True, exist_ok=True)
    if mosquitto_binary() is not None:
        return start_mosquitto(workdir, timeout=timeout)
    if importlib.util.find_spec("amqtt") is None:
        raise UserError(
            "no MQTT broker: install mosquitto (apt-get install mosquitto) "
            "or the embedded one (pip install 'cascade-agents[embedded]')"
        )
    port = free_port()
    return BrokerProcess("127.0.0.1", port, workdir, _launch(workdir, port, timeout, "amqtt"), kind="amqtt")
