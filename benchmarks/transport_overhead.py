"""Transport overhead per hop: cascade's path against a bare paho + mosquitto round trip, same run, same broker.

Baseline: two bare paho clients (TCP_NODELAY set), the responder echoing raw bytes
from its callback. cascade: MqttLink on both sides, envelopes encoded and decoded,
the responder validating, queueing to a worker thread (as a tier does) and replying
with a result envelope. No model runs on either side. Payloads of 3 KB and 100 KB.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agents.transport.broker import BrokerProcess
from agents.transport.envelope import Envelope, decode, encode
from agents.transport.mqtt import LinkSettings, MqttLink, set_nodelay
from benchmarks.common import median_ms, private_broker

ROUNDS = 300
WARMUP = 30


def _bare_client(broker: BrokerProcess, cid: str, inbox: queue.Queue[bytes] | None, echo_to: str | None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.on_socket_open = lambda _c, _u, sock: set_nodelay(sock)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()

    def on_message(client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if echo_to:
            client.publish(echo_to, msg.payload, qos=1)
        elif inbox is not None:
            inbox.put(bytes(msg.payload))

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    connected.wait(10)
    return c


def bare_round_trip(broker: BrokerProcess, size: int) -> float:
    """Median ms of a bare paho request/response through the broker."""
    inbox: queue.Queue[bytes] = queue.Queue()
    responder = _bare_client(broker, f"bare-resp-{os.getpid()}", None, "bench/bare/reply")
    requester = _bare_client(broker, f"bare-req-{os.getpid()}", inbox, None)
    responder.subscribe("bench/bare/request", qos=1)
    requester.subscribe("bench/bare/reply", qos=1)
    time.sleep(0.3)  # let both SUBACKs land before timing; no event is exposed for it
    payload = os.urandom(size)
    samples = []
    for i in range(ROUNDS + WARMUP):
        t0 = time.perf_counter_ns()
        requester.publish("bench/bare/request", payload, qos=1)
        inbox.get(timeout=10)
        if i >= WARMUP:
            samples.append(time.perf_counter_ns() - t0)
    for c in (requester, responder):
        c.disconnect()
        c.loop_stop()
    return median_ms(samples)


def cascade_round_trip(broker: BrokerProcess, size: int) -> float:
    """Median ms of the same round trip through cascade's envelope, link, queue and worker thread."""
    settings = LinkSettings(host=broker.host, port=broker.port)
    work: queue.Queue[Envelope] = queue.Queue()
    replies: queue.Queue[Envelope] = queue.Queue()
    stop = threading.Event()

    def on_request(_t: str, payload: bytes, _p: Any) -> None:
        work.put(decode(payload))

    def worker() -> None:
        while not stop.is_set():
            try:
                env = work.get(timeout=0.1)
            except queue.Empty:
                continue
            reply = Envelope({"id": env.id, "kind": "result", "prediction": 0}, stamps=env.stamps)
            responder.publish(str(env.header["reply_to"]), encode(reply), qos=1)

    responder = MqttLink(f"casc-resp-{os.getpid()}", settings, on_request)
    requester = MqttLink(f"casc-req-{os.getpid()}", settings, lambda _t, p, _pr: replies.put(decode(p)))
    responder.subscribe("bench/cascade/request")
    requester.subscribe("bench/cascade/reply")
    for link in (responder, requester):
        link.start()
        link.wait_connected(10)
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    time.sleep(0.3)  # as above: subscriptions settle before timing
    payload = os.urandom(size)
    samples = []
    for i in range(ROUNDS + WARMUP):
        t0 = time.perf_counter_ns()
        env = Envelope(
            {"id": f"r{i}", "kind": "request", "reply_to": "bench/cascade/reply", "encoding": "png"}, payload
        )
        env.stamp("publish", time.time_ns())
        requester.publish("bench/cascade/request", encode(env))
        replies.get(timeout=10)
        if i >= WARMUP:
            samples.append(time.perf_counter_ns() - t0)
    stop.set()
    thread.join()
    requester.close()
    responder.close()
    return median_ms(samples)


def main() -> None:
    print(f"transport_overhead (median of {ROUNDS} request/response round trips, QoS 1, loopback mosquitto)")
    with private_broker() as broker:
        for size in (3 * 1024, 100 * 1024):
            bare = bare_round_trip(broker, size)
            ours = cascade_round_trip(broker, size)
            ratio = ours / bare
            verdict = "PASS" if ratio <= 1.5 else "FAIL"
            print(
                f"  {size // 1024:>4} KB  bare paho {bare:7.3f} ms  cascade {ours:7.3f} ms  ratio {ratio:5.2f} "
                f"(target <= 1.5)  {verdict}"
            )


if __name__ == "__main__":
    main()
