"""A thin paho-mqtt wrapper: TCP_NODELAY, availability (online/offline/stopped), subscriptions kept across reconnects.

Callbacks run on paho's network thread and must not block: the handler given to
:class:`MqttLink` should validate and enqueue, nothing more.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, Any], None]
#: Told of an exception a handler raised (the topic, the exception); the message is then dropped.
ErrorHandler = Callable[[str, Exception], None]


@dataclass
class LinkSettings:
    """How to reach the broker; secrets come from the environment, never from YAML."""

    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30
    protocol: int = 5
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False


def set_nodelay(sock: Any) -> None:
    """Disable Nagle's algorithm on a client socket (small request/response messages otherwise wait for ACKs)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # e.g. a websocket wrapper; latency suffers but it works
        log.warning("could not set TCP_NODELAY: %s", exc)


class MqttLink:
    """One agent's connection: connects in the background, reconnects on its own, re-subscribes in ``on_connect``."""

    def __init__(
        self,
        client_id: str,
        settings: LinkSettings,
        on_message: MessageHandler,
        status_topic: str | None = None,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self.settings = settings
        self.status_topic = status_topic
        self.connected = threading.Event()
        self.connects = 0
        self.refusal: str | None = None  # the broker's reason, when it refused the last attempt
        self._closing = False
        self._subscriptions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._handler = on_message
        self._on_error = on_error
        self.dropped_publishes = 0  # paho's queue was full (the broker away for 10,000 messages)
        self._last_drop_log = 0.0
        protocol = mqtt.MQTTv5 if settings.protocol == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda _c, _u, sock: set_nodelay(sock)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.max_queued_messages_set(10000)
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls_ca or settings.tls_cert:
            self.client.tls_set(
                ca_certs=settings.tls_ca,
                certfile=settings.tls_cert,
                keyfile=settings.tls_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(settings.tls_insecure)
        if status_topic:
            self.client.will_set(status_topic, b"offline", qos=1, retain=True)

    @property
    def mqtt5(self) -> bool:
        """Whether the link speaks MQTT 5 (message expiry, response topic, session expiry)."""
        return self.settings.protocol == 5

    def start(self) -> None:
        """Connect in the background; returns at once (see :meth:`wait_connected`)."""
        kwargs: dict[str, Any] = {}
        if self.mqtt5:
            kwargs["clean_start"] = True
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive, **kwargs)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds pass; True if connected."""
        return self.connected.wait(timeout)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic] = qos
        # paho's state, not our event: between the CONNACK and the end of on_connect (which subscribes to a
        # copy of the list) the event is still clear, and a topic added then would wait for a reconnect.
        # Subscribing twice is harmless.
        if self.client.is_connected():
            self.client.subscribe(topic, qos)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        response_topic: str | None = None,
    ) -> None:
        """Queue a message for sending; paho's thread writes it (queued while disconnected).

        With MQTT 5, ``expiry_s`` and ``response_topic`` also go out as properties; the
        envelope carries the same facts for 3.1.1 brokers.
        """
        props = None
        if self.mqtt5 and (expiry_s or response_topic):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if expiry_s:
                props.MessageExpiryInterval = max(1, int(expiry_s))
            if response_topic:
                props.ResponseTopic = response_topic
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # dropped by paho: count it, say so (at most once a second)
            self.dropped_publishes += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:
                self._last_drop_log = now
                log.error("publish to %s dropped: paho's queue is full [%d dropped]", topic, self.dropped_publishes)

    def close(self, final_status: bytes = b"stopped", timeout: float = 3.0) -> None:
        """Publish the final status (retained), disconnect cleanly and stop the network thread."""
        if self.status_topic and self.connected.is_set():
            info = self.client.publish(self.status_topic, final_status, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("final status not confirmed: %s", exc)
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.refusal = str(reason)
            log.error("broker refused the connection: %s", reason)
            return
        self.refusal = None
        self.connects += 1
        with self._lock:
            subs = list(self._subscriptions.items())
        for topic, qos in subs:
            client.subscribe(topic, qos)
        if self.status_topic:
            client.publish(self.status_topic, b"online", qos=1, retain=True)
        self.connected.set()
        log.info("connected to %s:%d (%d)", self.settings.host, self.settings.port, self.connects)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if self._closing:
            log.debug("disconnected from broker (%s)", reason)
        else:
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._handler(message.topic, bytes(message.payload), message.properties)
        except Exception as exc:  # raised on paho's thread, it would end it: the agent would stay online, deaf
            if self._on_error is not None:
                self._on_error(message.topic, exc)
            else:
                log.exception("message on %s dropped: its handler raised", message.topic)
