"""Edge throughput with dynamic batching against batch 1, under saturating load from several devices.

Four simulated devices (MqttLink clients) keep 64 requests each in flight to one
real TierAgent (edge-medium, one torch thread) on a private broker; answered
requests per second are counted at the devices. Run once with ``max_batch: 1``,
once with ``max_batch: 32``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

from agents.config import DeploymentConfig
from agents.datasets import SAMPLE_TAR, load_image_set
from agents.tier import TierAgent
from agents.transport.envelope import Envelope, encode
from agents.transport.images import encode_image
from agents.transport.mqtt import LinkSettings, MqttLink
from agents.transport.topics import Topics
from benchmarks.common import private_broker

DEVICES = 4
IN_FLIGHT = 64
SECONDS = 8.0


def throughput(port: int, max_batch: int, payloads: list[bytes]) -> float:
    """Answers per second over SECONDS of saturating load."""
    cfg = DeploymentConfig.model_validate(
        {
            "deployment": "bench",
            "broker": {"port": port},
            "tiers": {"edge": {"model": "edge-medium", "max_batch": max_batch, "max_wait_ms": 2, "threads": 1}},
        }
    )
    topics = Topics("bench")
    edge = TierAgent(cfg, "edge", f"edge-b{max_batch}")
    server = threading.Thread(target=edge.run, daemon=True)
    server.start()
    answered = [0]
    lock = threading.Lock()
    stop = threading.Event()
    links: list[MqttLink] = []

    def make_device(k: int) -> None:
        reply = topics.results(f"d{k}")
        counter = [0]

        def send(link: MqttLink) -> None:
            counter[0] += 1
            env = Envelope(
                {"id": f"d{k}-{counter[0]}", "kind": "request", "reply_to": reply, "encoding": "png"},
                payloads[counter[0] % len(payloads)],
            )
            link.publish(topics.requests("edge"), encode(env))

        def on_reply(_t: str, _p: bytes, _props: Any) -> None:
            with lock:
                answered[0] += 1
            if not stop.is_set():
                send(link)

        link = MqttLink(f"bench-d{k}-{max_batch}", LinkSettings(port=port), on_reply)
        link.subscribe(reply)
        link.start()
        link.wait_connected(10)
        links.append(link)
        for _ in range(IN_FLIGHT):
            send(link)

    time.sleep(1.0)  # the edge subscribes in its own thread; give it a moment before load starts
    for k in range(DEVICES):
        make_device(k)
    time.sleep(2.0)  # warm-up
    with lock:
        start_count = answered[0]
    t0 = time.perf_counter()
    stop.wait(SECONDS)
    with lock:
        done = answered[0] - start_count
    elapsed = time.perf_counter() - t0
    stop.set()
    edge.stop.set()
    server.join(10)
    for link in links:
        link.close()
    return done / elapsed


def main() -> None:
    torch.set_num_threads(1)
    images = load_image_set(SAMPLE_TAR).images[:256]
    payloads = [encode_image(np.ascontiguousarray(im), "png")[1] for im in images]
    with private_broker() as broker:
        single = throughput(broker.port, 1, payloads)
        batched = throughput(broker.port, 32, payloads)
    ratio = batched / single
    print(f"edge_batching ({DEVICES} devices x {IN_FLIGHT} in flight, edge-medium, 1 torch thread, {SECONDS:.0f} s)")
    print(
        f"  batch 1 {single:8.1f} answers/s  dynamic batch 32 {batched:8.1f} answers/s  ratio {ratio:5.2f} "
        f"(target >= 3)  {'PASS' if ratio >= 3 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
