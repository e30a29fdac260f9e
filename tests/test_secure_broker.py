"""The production broker files as shipped: TLS, passwords and ``broker/cascade.acl``, with the real agents.

mosquitto runs ``broker/mosquitto.prod.conf`` with only its paths and ports changed
(certificates made for the test by ``openssl``, accounts by ``mosquitto_passwd``), so
what the test proves is what an operator deploys.
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agents.datasets import SAMPLE_TAR
from agents.transport.broker import free_port, mosquitto_binary
from agents.transport.mqtt import LinkSettings, MqttLink
from tests.harness import records, stop

REPO = Path(__file__).resolve().parents[1]
ACCOUNTS = ("dev1", "dev2", "edge-1", "cloud-1", "cam1", "monitor")

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None or shutil.which("openssl") is None,
    reason="needs mosquitto, mosquitto_passwd and openssl (make test installs them)",
)


@dataclass
class SecureBroker:
    port: int
    ca: Path
    dir: Path
    acl: str = "shipped"  # broker/cascade.acl, or "generated" by `cascade acl` from the test's deployment

    def password(self, account: str) -> str:
        return f"pw-{account}-{self.port}"

    def settings(self, account: str | None, password: str | None = None, tls: bool = True) -> LinkSettings:
        return LinkSettings(
            port=self.port,
            username=account,
            password=password if password is not None else (self.password(account) if account else None),
            tls_ca=str(self.ca) if tls else None,
        )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _prod_config(d: Path, tls_port: int, plain_port: int) -> str:
    """``broker/mosquitto.prod.conf`` with the test's files and ports."""
    replace = {
        "password_file": f"password_file {d}/passwd",
        "acl_file": f"acl_file {d}/cascade.acl",
        "cafile": f"cafile {d}/ca.crt",
        "certfile": f"certfile {d}/server.crt",
        "keyfile": f"keyfile {d}/server.key",
        "persistence_location": f"persistence_location {d}/",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "listener 1883": f"listener {plain_port} 127.0.0.1",
    }
    out = []
    for line in (REPO / "broker" / "mosquitto.prod.conf").read_text().splitlines():
        key = next((k for k in replace if line.startswith(k)), None)
        out.append(replace[key] if key else line)
    # Started as root, mosquitto would switch to the mosquitto user, which cannot read the test's files.
    return "\n".join([*out, f"log_dest file {d}/mosquitto.log", f"user {getpass.getuser()}"]) + "\n"


@pytest.fixture(params=["shipped", "generated"])
def secure_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SecureBroker]:
    d = tmp_path / "broker"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cascade test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=d)  # fmt: skip
    tls_port, plain_port = free_port(), free_port()
    broker = SecureBroker(tls_port, d / "ca.crt", d, request.param)
    (d / "passwd").write_text("")
    for account in ACCOUNTS:
        subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), account, broker.password(account)], check=True)
    if broker.acl == "shipped":
        shutil.copy(REPO / "broker" / "cascade.acl", d / "cascade.acl")
    else:
        acl = subprocess.run(
            [sys.executable, "-m", "agents.cli", "acl", "--config", str(_deployment(tmp_path, broker))],
            capture_output=True,
            text=True,
            check=True,
        )
        (d / "cascade.acl").write_text(acl.stdout)
    (d / "mosquitto.conf").write_text(_prod_config(d, tls_port, plain_port))
    assert mosquitto_binary() is not None
    proc = subprocess.Popen([mosquitto_binary() or "", "-c", str(d / "mosquitto.conf")], stderr=subprocess.STDOUT,
                            stdout=(d / "out.log").open("wb"))  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (d / "mosquitto.log").exists() or "running" not in (d / "mosquitto.log").read_text():
            assert proc.poll() is None, (d / "out.log").read_text() + (d / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield broker
    finally:
        proc.terminate()
        proc.wait(10)


def _deployment(tmp: Path, broker: SecureBroker) -> Path:
    cfg = {
        "deployment": "t",
        "run_dir": str(tmp / "runs"),
        "broker": {"host": "127.0.0.1", "port": broker.port, "tls": {"ca_file": str(broker.ca)}},
        "devices": [
            {
                "id": "dev1",
                "threshold": 0.9,
                "threads": 1,
                "deadline_ms": 5000,
                "source": {"kind": "sensor", "sensor": "cam1"},
            },
            {"id": "dev2", "source": {"kind": "imagefolder", "path": str(SAMPLE_TAR)}},  # never started
        ],
        "sensors": [
            {
                "id": "cam1",
                "source": {
                    "kind": "imagefolder",
                    "path": str(SAMPLE_TAR),
                    "rate": "fixed",
                    "fps": 200,
                    "shuffle": True,
                },
            }
        ],
        "tiers": {
            "edge": {"model": "edge-medium", "threads": 1, "threshold": 0.95, "forward_to": "cloud"},
            "cloud": {"model": "cloud-large", "threads": 1},
        },
    }
    path = tmp / "deployment.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _agent(tmp: Path, broker: SecureBroker, account: str, *args: str) -> subprocess.Popen[bytes]:
    # One YAML for every node; each process's account and password come from its environment.
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CASCADE_MQTT_USERNAME": account,
        "CASCADE_MQTT_PASSWORD": broker.password(account),
    }
    log = (tmp / f"{account}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "agents.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env)


def _status(cfg: Path, account: str, password: str, wait: float = 2.5) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CASCADE_MQTT_USERNAME": account, "CASCADE_MQTT_PASSWORD": password}
    cmd = [sys.executable, "-m", "agents.cli", "status", "--config", str(cfg), "--once", "--wait", str(wait)]
    return subprocess.run([*cmd, "--json", "-"], capture_output=True, text=True, env=env, timeout=60)


def _wait_online(cfg: Path, broker: SecureBroker, agents: set[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = _status(cfg, "monitor", broker.password("monitor"), wait=1.0)
        states = {r["agent"]: r["state"] for r in json.loads(result.stdout or "[]")}
        if all(states.get(a) == "online" for a in agents):
            return
        assert time.monotonic() < deadline, f"agents not online: {states}; {result.stderr}"


def test_cascade_through_tls_passwords_and_acls(tmp_path: Path, secure_broker: SecureBroker) -> None:
    cfg = _deployment(tmp_path, secure_broker)
    procs = {
        "cloud-1": _agent(tmp_path, secure_broker, "cloud-1", "cloud", "--config", str(cfg), "--id", "cloud-1"),
        "edge-1": _agent(tmp_path, secure_broker, "edge-1", "edge", "--config", str(cfg), "--id", "edge-1"),
    }
    try:
        _wait_online(cfg, secure_broker, {"cloud-1", "edge-1"})
        # Frames from a replayed sensor on an account of its own, as in config/lab.yaml.
        device_args = ("device", "--config", str(cfg), "--id", "dev1", "--frames", "150")
        procs["dev1"] = _agent(tmp_path, secure_broker, "dev1", *device_args)
        _wait_online(cfg, secure_broker, {"dev1"})
        sensor_args = ("replay", "--config", str(cfg), "--sensor", "cam1", "--frames", "150")
        procs["cam1"] = _agent(tmp_path, secure_broker, "cam1", *sensor_args)
        assert procs["dev1"].wait(180) == 0, (tmp_path / "dev1.log").read_text()[-2000:]
        assert procs["cam1"].wait(60) == 0, (tmp_path / "cam1.log").read_text()[-2000:]
        recs = records(tmp_path)
        assert len(recs) == 150
        by_tier = {t: sum(r["tier"] == t for r in recs) for t in ("device", "edge", "cloud")}
        assert by_tier["edge"] > 0 and by_tier["cloud"] > 0, by_tier  # both hops went through the ACLs
        assert all(r["outcome"] != "timeout" for r in recs)
        # The read-only monitor account sees every agent; its health and status topics are all it may read.
        rows = {r["agent"]: r for r in json.loads(_status(cfg, "monitor", secure_broker.password("monitor")).stdout)}
        assert rows["dev1"]["state"] == "stopped" and rows["cam1"]["state"] == "stopped"
        assert rows["edge-1"]["state"] == "online" and rows["cloud-1"]["state"] == "online"
        assert rows["edge-1"]["answered"] + rows["edge-1"]["passed_on"] == by_tier["edge"] + by_tier["cloud"]
        assert rows["edge-1"]["rejected"] == 0 and rows["cloud-1"]["rejected"] == 0
    finally:
        codes = {name: stop(p) for name, p in procs.items()}
    assert codes == dict.fromkeys(procs, 0)


def _listener(
    broker: SecureBroker, account: str | None, topic: str, tls: bool = True
) -> tuple[MqttLink, queue.Queue[str]]:
    """A client of ``account`` subscribed to ``topic``; the topics it receives land in the queue."""
    got: queue.Queue[str] = queue.Queue()
    settings = broker.settings(account, tls=tls)
    link = MqttLink(f"acl-{account}-{time.monotonic_ns()}", settings, lambda t, _p, _x: got.put(t))
    link.subscribe(topic)
    link.start()
    return link, got


def test_acls_keep_devices_apart_and_strangers_out(tmp_path: Path, secure_broker: SecureBroker) -> None:
    results = "cascade/t/device/dev1/results"
    owner, owner_got = _listener(secure_broker, "dev1", results)
    other, other_got = _listener(secure_broker, "dev2", results)  # another device asking for dev1's answers
    cloud, cloud_got = _listener(secure_broker, "cloud-1", "cascade/t/cloud/requests")
    watcher, watcher_got = _listener(secure_broker, "monitor", "cascade/t/#")  # may read status and health only
    edge, edge_got = _listener(secure_broker, "edge-1", "cascade/t/edge/requests")
    links = (owner, other, cloud, watcher, edge)
    for link in links:
        assert link.wait_connected(10)
    time.sleep(0.5)  # subscriptions granted before the publishes
    # Denied: dev1's answers to dev2, a device skipping its edge, a device forging an edge's health.
    edge.publish(results, b"answer for dev1")
    other.publish("cascade/t/cloud/requests", b"device skipping its edge")
    other.publish("cascade/t/agents/edge-1/health", b"{}")
    # The monitor publishing work for the edge: the shipped file's patterns apply to every account and
    # allow it; the generated file gives each account only its own block.
    watcher.publish("cascade/t/edge/requests", b"from the monitor")
    # Allowed (the positive controls): an edge forwarding to the cloud, a device's own health.
    edge.publish("cascade/t/cloud/requests", b"forwarded")
    other.publish("cascade/t/agents/dev2/health", b"{}")
    assert owner_got.get(timeout=5) == results
    assert cloud_got.get(timeout=5) == "cascade/t/cloud/requests"
    assert watcher_got.get(timeout=5) == "cascade/t/agents/dev2/health"
    time.sleep(1.0)
    assert other_got.empty() and cloud_got.empty() and watcher_got.empty()
    assert edge_got.qsize() == (1 if secure_broker.acl == "shipped" else 0)
    for link in links:
        link.close()

    # Wrong password, no account, and plain TCP on the TLS port: never connected, and status says why.
    cfg = _deployment(tmp_path, secure_broker)
    result = _status(cfg, "monitor", "wrong", wait=2)
    assert result.returncode == 2 and "refused the connection" in result.stderr, result.stderr
    anonymous, _ = _listener(secure_broker, None, "cascade/t/#")
    plain, _ = _listener(secure_broker, "dev1", "cascade/t/#", tls=False)
    assert not anonymous.wait_connected(2) and not plain.wait_connected(0.5)
    anonymous.close()
    plain.close()
