"""MqttLink against a real mosquitto: round trip, availability, re-subscription after a broker restart."""

from __future__ import annotations

import queue
import socket
from pathlib import Path
from typing import Any

import pytest

from agents.transport import broker as broker_module
from agents.transport.broker import BrokerProcess, broker_config
from agents.transport.mqtt import LinkSettings, MqttLink


class Inbox:
    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def __call__(self, topic: str, payload: bytes, _props: Any) -> None:
        self.items.put((topic, payload))

    def get(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.items.get(timeout=timeout)


def deliver(sender: MqttLink, topic: str, payload: bytes, inbox: Inbox) -> None:
    """Publish until the message arrives: subscriptions settle asynchronously, so the first may find none."""
    for _ in range(50):
        sender.publish(topic, payload)
        try:
            assert inbox.get(0.1) == (topic, payload)
            return
        except queue.Empty:
            continue
    raise AssertionError(f"{topic}: nothing arrived")


def _link(broker: BrokerProcess, cid: str, inbox: Inbox, status: str | None = None, protocol: int = 5) -> MqttLink:
    link = MqttLink(cid, LinkSettings(host=broker.host, port=broker.port, protocol=protocol), inbox, status)
    link.start()
    assert link.wait_connected(10)
    return link


def test_generated_config_keeps_the_latency_settings(tmp_path: Any) -> None:
    conf = broker_config(12345, tmp_path)
    assert "set_tcp_nodelay true" in conf and "listener 12345 127.0.0.1" in conf
    assert "listener 1883" not in conf


def test_request_response_round_trip_with_nodelay(broker: BrokerProcess) -> None:
    a_in, b_in = Inbox(), Inbox()
    a = _link(broker, "a", a_in)
    b = _link(broker, "b", b_in, protocol=4)
    try:
        a.subscribe("t/reply")
        b.subscribe("t/request")
        sock = a.client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        deliver(a, "t/request", b"ping", b_in)
        b.publish("t/reply", b"pong")
        assert a_in.get() == ("t/reply", b"pong")
    finally:
        a.close()
        b.close()


def test_status_online_then_stopped_and_resubscribe_after_restart(broker: BrokerProcess) -> None:
    watch_in, agent_in = Inbox(), Inbox()
    watcher = _link(broker, "watcher", watch_in)
    watcher.subscribe("cascade/test/agents/+/status")
    agent = _link(broker, "agent-1", agent_in, status="cascade/test/agents/agent-1/status")
    agent.subscribe("cascade/test/in")
    try:
        assert watch_in.get() == ("cascade/test/agents/agent-1/status", b"online")
        broker.restart()
        # paho reconnects on its own; the subscription made before the restart must be back.
        for _ in range(200):
            if agent.connects >= 2 and watcher.connects >= 2:
                break
            agent.connected.wait(0.1)
            watcher.connected.wait(0.1)
        assert agent.connects >= 2 and watcher.connects >= 2
        deliver(watcher, "cascade/test/in", b"after-restart", agent_in)
    finally:
        agent.close()
    while True:
        topic, payload = watch_in.get()
        if payload == b"stopped":
            assert topic == "cascade/test/agents/agent-1/status"
            break
    watcher.close()


def test_embedded_broker_when_mosquitto_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "mosquitto_binary", lambda: None)
    with broker_module.start_any_broker(tmp_path / "amqtt") as embedded:
        assert embedded.kind == "amqtt" and embedded.protocol == "3.1.1" and not embedded.shared_subscriptions
        a_in, b_in = Inbox(), Inbox()
        a = _link(embedded, "a", a_in, status="cascade/t/agents/a/status", protocol=4)
        b = _link(embedded, "b", b_in, protocol=4)
        try:
            b.subscribe("cascade/t/#")
            assert b_in.get(10) == ("cascade/t/agents/a/status", b"online")  # retained
            a.publish("cascade/t/x", b"over amqtt")
            assert b_in.get(10) == ("cascade/t/x", b"over amqtt")
        finally:
            a.close()
            b.close()


def test_a_handler_that_raises_is_reported_and_the_link_keeps_receiving(broker: BrokerProcess) -> None:
    inbox = Inbox()
    errors: list[tuple[str, Exception]] = []

    def handler(topic: str, payload: bytes, props: Any) -> None:
        if payload == b"boom":
            raise SyntaxError("a decoder's idea of bad input")
        inbox(topic, payload, props)

    receiver = MqttLink(
        "rx-raise",
        LinkSettings(host=broker.host, port=broker.port),
        handler,
        on_error=lambda t, e: errors.append((t, e)),
    )
    receiver.start()
    assert receiver.wait_connected(10)
    receiver.subscribe("t/in")
    sender = _link(broker, "tx-raise", Inbox())
    try:
        deliver(sender, "t/in", b"first", inbox)
        sender.publish("t/in", b"boom")
        deliver(sender, "t/in", b"after", inbox)  # paho's thread survived the exception
        assert [(t, type(e)) for t, e in errors] == [("t/in", SyntaxError)]
    finally:
        sender.close()
        receiver.close()


def test_a_subscription_made_while_connecting_is_sent(broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between the CONNACK and the end of on_connect paho is connected and our event is still clear:
    # a topic added then is in no copy on_connect took, so it must go out at once.
    link = MqttLink("sub-window", LinkSettings(host=broker.host, port=broker.port), Inbox())
    sent: list[str] = []
    monkeypatch.setattr(link.client, "is_connected", lambda: True)
    monkeypatch.setattr(link.client, "subscribe", lambda topic, qos=0: sent.append(topic))
    assert not link.connected.is_set()
    link.subscribe("t/late")
    assert sent == ["t/late"]


def test_publishes_paho_drops_are_counted(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: every QoS 1 message waits in paho's queue
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = MqttLink("qfull", LinkSettings(host="127.0.0.1", port=port), Inbox())
    for _ in range(10_003):
        link.publish("t/x", b"m", qos=1)
    assert link.dropped_publishes == 3
