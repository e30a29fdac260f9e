"""Edge and cloud agents: one class, configured per tier.

Requests arrive on paho's thread, are validated, decoded and queued (a full queue
drops the oldest and counts it); decoding there overlaps the worker's model run,
which releases the GIL. One worker takes dynamic batches (up to ``max_batch``
requests or ``max_wait_ms`` after the first, whichever comes first), runs the model,
and answers to the reply topic in each envelope, or forwards what it is not
confident about to the next tier.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from agents.config import DeploymentConfig
from agents.errors import UserError
from agents.models.inputs import to_input
from agents.runtime import Agent, CalibratedModel, exit_thresholds
from agents.transport.envelope import Envelope, MessageError, decode, encode
from agents.transport.images import decode_frame

log = logging.getLogger(__name__)


class TierAgent(Agent):
    """An edge or cloud worker."""

    def __init__(self, cfg: DeploymentConfig, tier: str, agent_id: str) -> None:
        if tier not in cfg.tiers:
            raise UserError(f"no tier {tier!r} in the config; configured: {sorted(cfg.tiers)}")
        super().__init__(cfg, agent_id, tier, self._on_message)
        self.tier = tier
        self.tcfg = cfg.tiers[tier]
        if self.tcfg.threads:
            torch.set_num_threads(self.tcfg.threads)
        self.net = CalibratedModel(self.tcfg.model)
        # No threshold: every answer comes from the final exit (what `cascade eval --cascade` assumes).
        self.thresholds = (
            exit_thresholds(self.tcfg.threshold, self.net.model.num_exits, f"tiers.{tier}.threshold")
            if self.tcfg.threshold is not None
            else [float("inf")] * self.net.model.num_exits
        )
        self.hw = (self.net.model.input_shape[1], self.net.model.input_shape[2])
        self._early_exits = self.tcfg.threshold is not None and self.net.model.num_exits > 1
        self._queue: deque[tuple[Envelope, np.ndarray]] = deque()
        self._cond = threading.Condition()
        self._batches = 0
        self._processed = 0

    # --- paho thread: validate, enqueue, return -------------------------------------------
    def _on_message(self, topic: str, payload: bytes, _props: Any) -> None:
        now = time.time_ns()
        try:
            env = decode(payload, self.cfg.broker.max_payload_bytes)
            if env.header.get("kind") != "request":
                raise MessageError("header", f"expected kind 'request', got {env.header.get('kind')!r}")
            if not isinstance(env.header.get("reply_to"), str) or not env.header["reply_to"]:
                raise MessageError("header", "request without a reply_to topic")
            image = decode_frame(env, self.hw)
        except MessageError as exc:
            self.reject(exc.kind, f"on {topic}: {exc.detail}")
            return
        env.stamp(f"{self.tier}_receive", now)
        with self._cond:
            if len(self._queue) >= self.tcfg.queue_size:
                self._queue.popleft()
                self.count("dropped_queue_full")
            self._queue.append((env, image))
            self._cond.notify()

    # --- worker ---------------------------------------------------------------------------
    def _next_batch(self) -> list[tuple[Envelope, np.ndarray]]:
        with self._cond:
            if not self._queue and not self._cond.wait_for(lambda: bool(self._queue) or self.stop.is_set(), 0.5):
                return []
            if not self._queue:
                return []
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.tcfg.max_wait_ms / 1000
            while len(batch) < self.tcfg.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            return batch

    def process(self, batch: list[tuple[Envelope, np.ndarray]]) -> None:
        """Run the model on a batch of decoded requests; answer or forward each."""
        if not batch:
            return
        exit_ns = time.time_ns()
        valid = [env for env, _ in batch]
        for env in valid:
            env.stamp(f"{self.tier}_queue_exit", exit_ns)
        start = time.time_ns()
        model = self.net.model
        # Without a threshold only the final exit can answer: the other heads are not worth running.
        first = 0 if self._early_exits else model.num_exits - 1
        with torch.inference_mode():
            x = to_input(np.stack([image for _, image in batch]))
            logits = model(x) if self._early_exits else [model.heads[first](model.run(x, exits=False).activation)]
        temps = self.net.temperatures[first:]
        probs = [torch.softmax(lg / float(t), dim=1) for lg, t in zip(logits, temps, strict=True)]
        end = time.time_ns()
        # (exits, batch) as Python lists: indexing tensors element by element costs more than the softmax.
        top = [p.max(dim=1) for p in probs]
        conf: list[list[float]] = [t.values.tolist() for t in top]
        pred: list[list[int]] = [t.indices.tolist() for t in top]
        last = len(probs) - 1
        for j, env in enumerate(valid):
            env.stamp(f"{self.tier}_start", start)
            env.stamp(f"{self.tier}_end", end)
            chosen = next((i for i in range(last) if conf[i][j] >= self.thresholds[first + i]), last)
            if chosen == last and self.tcfg.forward_to and conf[last][j] < self.thresholds[first + last]:
                env.stamp(f"{self.tier}_forward", time.time_ns())
                self.link.publish(self.topics.requests(self.tcfg.forward_to), encode(env), qos=1)
                self.count("forwarded")
                continue
            reply = Envelope(
                {
                    "id": env.id,
                    "kind": "result",
                    "tier": self.tier,
                    "agent": self.id,
                    "model": self.net.name,
                    "exit": first + chosen,
                    "prediction": pred[chosen][j],
                    "confidence": round(conf[chosen][j], 6),
                    "request_bytes": len(env.payload),
                },
                stamps=env.stamps,
            )
            reply.stamp("reply_publish", time.time_ns())
            self.link.publish(str(env.header["reply_to"]), encode(reply), qos=1)
            self.count("answered")
        self._batches += 1
        self._processed += len(valid)

    def health(self) -> dict[str, Any]:
        """Live status plus queue depth and batching."""
        h = super().health()
        with self._cond:
            h["queue_depth"] = len(self._queue)
        h["batches"] = self._batches
        h["mean_batch"] = round(self._processed / self._batches, 2) if self._batches else 0.0
        return h

    def run(self, drain_s: float = 2.0) -> int:
        """Serve until the stop event; then drain the queue for up to ``drain_s`` and exit 0."""
        sub = self.topics.shared_requests(self.tier) if self.tcfg.shared else self.topics.requests(self.tier)
        self.link.subscribe(sub, qos=1)
        self.link.start()
        log.info("%s %s serving %s with %s", self.tier, self.id, sub, self.net.name)
        while not self.stop.is_set():
            batch = self._next_batch()
            if batch:
                self.process(batch)
            self.maybe_publish_health()
        drain_until = time.monotonic() + drain_s
        while time.monotonic() < drain_until:
            with self._cond:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.tcfg.max_batch))]
            if not batch:
                break
            self.process(batch)
        self.maybe_publish_health(0)
        self.link.close()
        log.info("%s %s stopped: %s", self.tier, self.id, dict(self.counters))
        return 0
