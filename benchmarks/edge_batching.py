"""Edge throughput with dynamic batching against batch 1, under saturating load from several devices.

Four simulated devices (MqttLink clients) keep 64 requests each in flight to one
real edge worker (``cascade edge`` as its own process, edge-medium, one torch
thread unless ``--threads``) on a private broker; answered requests per second
are counted at the devices. Run once with ``max_batch: 1``, once with
``max_batch: 32``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents.config import DeploymentConfig
from agents.datasets import SAMPLE_TAR, load_image_set
from agents.evaluation.latency import whole_model_latency
from agents.models.checkpoint import load_checkpoint
from agents.transport.envelope import Envelope, encode
from agents.transport.images import encode_image
from agents.transport.mqtt import LinkSettings, MqttLink
from agents.transport.topics import Topics
from benchmarks.common import private_broker

DEVICES = 4
IN_FLIGHT = 64
SECONDS = 8.0


def throughput(port: int, max_batch: int, payloads: list[bytes], workdir: Path, threads: int = 1) -> float:
    """Answers per second over SECONDS of saturating load."""
    cfg = {
        "deployment": "bench",
        "broker": {"port": port},
        "tiers": {"edge": {"model": "edge-medium", "max_batch": max_batch, "max_wait_ms": 2, "threads": threads}},
    }
    DeploymentConfig.model_validate(cfg)
    cfg_path = workdir / f"edge-b{max_batch}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    topics = Topics("bench")
    # The edge in its own process, as deployed: the load generator must not share its interpreter.
    edge = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "edge", "--config", str(cfg_path), "--id", f"edge-b{max_batch}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    online = threading.Event()
    watcher = MqttLink(
        f"bench-watch-{max_batch}", LinkSettings(port=port), lambda _t, p, _pr: online.set() if p == b"online" else None
    )
    watcher.subscribe(topics.status(f"edge-b{max_batch}"))
    watcher.start()
    if not online.wait(120):
        raise RuntimeError("the edge did not come online")
    watcher.close()
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
    edge.send_signal(signal.SIGTERM)
    edge.wait(30)
    for link in links:
        link.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the edge worker (default 1)")
    threads = parser.parse_known_args()[0].threads  # known only: run_all passes its own argv
    torch.set_num_threads(threads)
    images = load_image_set(SAMPLE_TAR).images[:256]
    payloads = [encode_image(np.ascontiguousarray(im), "png")[1] for im in images]
    with private_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        single = throughput(broker.port, 1, payloads, Path(tmp), threads)
        batched = throughput(broker.port, 32, payloads, Path(tmp), threads)
    ratio = batched / single
    model, _ = load_checkpoint("edge-medium")
    ceiling = whole_model_latency(model, 1, reps=50) / (whole_model_latency(model, 32, reps=20) / 32)
    print(
        f"edge_batching ({DEVICES} devices x {IN_FLIGHT} in flight, edge-medium, {threads} torch thread(s), "
        f"{SECONDS:.0f} s)"
    )
    print(
        f"  batch 1 {single:8.1f} answers/s  dynamic batch 32 {batched:8.1f} answers/s  ratio {ratio:5.2f} "
        f"(target >= 3)  {'PASS' if ratio >= 3 else 'FAIL'}"
    )
    print(f"  for scale: edge-medium alone, batch 32 vs batch 1 per image, same thread count: {ceiling:5.2f}x")


if __name__ == "__main__":
    main()
