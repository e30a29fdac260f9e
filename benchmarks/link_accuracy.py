"""``cascade link`` accuracy through a real mosquitto: added delay and throughput against what was configured.

Delay: a paho client publishes (QoS 0, 100 B, one message at a time) to a
topic another client subscribes to directly; the publisher connects through the
proxy in one run and straight to the broker in the other, alternating in blocks
so both see the same machine. Added delay = median one-way through the proxy −
median one-way direct (target: within 1 ms of the configured delay). Also the
round trip with both clients behind the link (target: within 2 ms of 4 × delay:
each client has its own link, crossed twice), the median with uniform jitter
(target: within 1 ms of the delay) and, with loss, the share of messages held
one retransmission timeout (target: the loss probability, within 3 σ).

Rate: a bulk transfer of 16 KiB QoS 0 messages through the proxy, the receiver
direct; throughput = bytes between the first and last arrival / their time
apart (target: within 10% of the configured rate).

The proxy runs in this process (``LinkProxy``), as a sweep runner would use it.
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agents.link import LinkProxy, LinkShape
from agents.transport.broker import BrokerProcess
from agents.transport.mqtt import set_nodelay
from benchmarks.common import private_broker

DELAYS_MS = (5.0, 20.0, 50.0)
RATES_MBIT = (1.0, 5.0, 20.0, 50.0)
ROUNDS = 100
JITTER_ROUNDS = 400  # the median of U(delay ± 5 ms) from 400 draws: standard error 0.25 ms
BULK_SECONDS = 2.0
MESSAGE_BYTES = 16 * 1024


class Client:
    """A bare paho MQTT 5 client (TCP_NODELAY) connected to ``host:port``, received messages timestamped."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.inbox: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}-{time.monotonic_ns()}", protocol=mqtt.MQTTv5
        )
        self.client.on_socket_open = lambda _c, _u, sock: set_nodelay(sock)
        self.client.max_queued_messages_set(0)
        connected = threading.Event()
        subscribed = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self._subscribed = subscribed

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            self.inbox.put((time.perf_counter_ns(), bytes(msg.payload)))

        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not connected.wait(10):
            raise RuntimeError(f"{name}: no CONNACK from {host}:{port}")

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 0 and wait for the SUBACK."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=0)
        if not self._subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for {topic}")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def one_way_ms(broker: BrokerProcess, proxy: LinkProxy | None, rounds: int = ROUNDS, size: int = 100) -> list[float]:
    """One-way publish → receive times (ms), the publisher through ``proxy`` (or direct), the subscriber direct."""
    topic = f"bench/link/{time.monotonic_ns()}"
    sub = Client(broker.host, broker.port, "link-sub")
    pub = Client(proxy.host, proxy.port, "link-pub") if proxy else Client(broker.host, broker.port, "link-pub")
    try:
        sub.subscribe(topic)
        payload = os.urandom(size)
        samples: list[float] = []
        for i in range(rounds + 5):
            t0 = time.perf_counter_ns()
            pub.client.publish(topic, payload, qos=0)
            t1, got = sub.inbox.get(timeout=10)
            assert got == payload
            if i >= 5:  # the first few settle the connection
                samples.append((t1 - t0) / 1e6)
            time.sleep(0.002)
        return samples
    finally:
        pub.close()
        sub.close()


def round_trip_ms(broker: BrokerProcess, proxy: LinkProxy | None, rounds: int = ROUNDS) -> list[float]:
    """Request → echo → reply times (ms), both clients through ``proxy`` (or direct)."""
    host, port = (proxy.host, proxy.port) if proxy else (broker.host, broker.port)
    base = f"bench/link/rt{time.monotonic_ns()}"
    req = Client(host, port, "link-req")
    echo = Client(host, port, "link-echo")
    try:

        def on_request(client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            client.publish(f"{base}/reply", msg.payload, qos=0)

        echo.client.on_message = on_request
        echo.subscribe(f"{base}/request")
        req.subscribe(f"{base}/reply")
        samples: list[float] = []
        for i in range(rounds + 5):
            t0 = time.perf_counter_ns()
            req.client.publish(f"{base}/request", b"x" * 100, qos=0)
            t1, _ = req.inbox.get(timeout=10)
            if i >= 5:
                samples.append((t1 - t0) / 1e6)
            time.sleep(0.002)
        return samples
    finally:
        req.close()
        echo.close()


def added_delay_ms(broker: BrokerProcess, proxy: LinkProxy, rounds: int = ROUNDS, blocks: int = 2) -> float:
    """Median one-way delay the proxy adds: alternating blocks with and without it, medians subtracted."""
    via: list[float] = []
    direct: list[float] = []
    for _ in range(blocks):
        direct += one_way_ms(broker, None, rounds // blocks)
        via += one_way_ms(broker, proxy, rounds // blocks)
    return statistics.median(via) - statistics.median(direct)


def throughput_mbit(broker: BrokerProcess, proxy: LinkProxy, total_bytes: int, size: int = MESSAGE_BYTES) -> float:
    """Mbit/s of a bulk QoS 0 transfer: publisher through ``proxy``, receiver direct, first to last arrival."""
    topic = f"bench/link/bulk{time.monotonic_ns()}"
    sub = Client(broker.host, broker.port, "link-bulk-sub")
    pub = Client(proxy.host, proxy.port, "link-bulk-pub")
    try:
        sub.subscribe(topic)
        count = max(3, total_bytes // size)
        payload = os.urandom(size)
        for _ in range(count):
            pub.client.publish(topic, payload, qos=0)
        arrivals = [sub.inbox.get(timeout=60)[0] for _ in range(count)]
        seconds = (arrivals[-1] - arrivals[0]) / 1e9
        return (count - 1) * size * 8 / seconds / 1e6
    finally:
        pub.close()
        sub.close()


def main() -> None:
    print(f"link_accuracy (in-process LinkProxy, loopback mosquitto; {ROUNDS} messages per delay)")
    failures = 0
    with private_broker() as broker:
        for delay in DELAYS_MS:
            with LinkProxy((broker.host, broker.port), LinkShape(delay_ms=delay)) as proxy:
                added = added_delay_ms(broker, proxy)
            ok = abs(added - delay) <= 1.0
            failures += not ok
            print(
                f"  delay {delay:5.1f} ms  measured added one-way {added:7.3f} ms  error {added - delay:+6.3f} ms "
                f"(target within 1 ms)  {'PASS' if ok else 'FAIL'}"
            )
        delay = 20.0
        base = statistics.median(round_trip_ms(broker, None))
        with LinkProxy((broker.host, broker.port), LinkShape(delay_ms=delay)) as proxy:
            rtt = statistics.median(round_trip_ms(broker, proxy)) - base
        ok = abs(rtt - 4 * delay) <= 2.0
        failures += not ok
        print(
            f"  delay {delay:5.1f} ms  request/response, both clients behind the link: added round trip {rtt:7.3f} ms "
            f"vs 4 × delay {4 * delay:.0f} ms (target within 2 ms)  {'PASS' if ok else 'FAIL'}"
        )
        shape = LinkShape(delay_ms=20.0, jitter_ms=5.0, seed=1)
        base = statistics.median(one_way_ms(broker, None))
        with LinkProxy((broker.host, broker.port), shape) as proxy:
            jittered = one_way_ms(broker, proxy, JITTER_ROUNDS)
        deciles = statistics.quantiles([ms - base for ms in jittered], n=10)
        added = statistics.median(jittered) - base
        ok = abs(added - shape.delay_ms) <= 1.0
        failures += not ok
        print(
            f"  delay {shape.delay_ms:5.1f} ms jitter {shape.jitter_ms:g} ms uniform  added one-way median "
            f"{added:7.3f} ms, p10 {deciles[0]:.2f} p90 {deciles[-1]:.2f} (uniform: 16, 24; {JITTER_ROUNDS} messages; "
            f"target median within 1 ms of the delay)  {'PASS' if ok else 'FAIL'}"
        )
        shape = LinkShape(delay_ms=5.0, loss=0.05, seed=1)
        rounds = 200
        with LinkProxy((broker.host, broker.port), shape) as proxy:
            samples = one_way_ms(broker, proxy, rounds)
            held = proxy.stats().held_up
        late = sum(ms > shape.delay_ms + shape.rto_s * 1e3 / 2 for ms in samples)
        expected = shape.loss * rounds
        ok = abs(late - expected) <= 3 * (expected * (1 - shape.loss)) ** 0.5
        failures += not ok
        print(
            f"  delay {shape.delay_ms:5.1f} ms loss {shape.loss:.0%}  {late}/{rounds} messages held one RTO "
            f"({shape.rto_s * 1e3:g} ms; expected {expected:.0f} ± {3 * (expected * (1 - shape.loss)) ** 0.5:.0f}, "
            f"{held} segments held in all)  {'PASS' if ok else 'FAIL'}"
        )
        for rate in RATES_MBIT:
            with LinkProxy((broker.host, broker.port), LinkShape(rate_mbit=rate)) as proxy:
                measured = throughput_mbit(broker, proxy, int(rate * 1e6 / 8 * BULK_SECONDS))
            error = measured / rate - 1
            ok = abs(error) <= 0.10
            failures += not ok
            print(
                f"  rate {rate:5.1f} Mbit/s  measured {measured:7.3f} Mbit/s  error {error * 100:+5.1f}% "
                f"(target within 10%)  {'PASS' if ok else 'FAIL'}"
            )
    print(f"  {'all PASS' if not failures else f'{failures} FAIL'}")


if __name__ == "__main__":
    main()
