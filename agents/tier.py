"""Edge and cloud agents: one class, configured per tier.

Requests arrive on paho's thread, are validated, decoded and queued (a full queue
drops the oldest and counts it); decoding there overlaps the worker's model run,
which releases the GIL. One worker takes dynamic batches (up to ``max_batch``
requests or ``max_wait_ms`` after the first, whichever comes first), runs the model,
and answers to the reply topic in each envelope, or forwards what it is not
confident about to the next tier.

Split requests carry the activation of a device model at a split point instead of
a frame; the tier resumes that model (listed under ``split_models``, the same
weights proven by digest) from there, up to its ``until`` point or the end, and
answers, forwards the activation onward, or forwards the device's attached frame
to the next tier's own model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.config import DeploymentConfig, SplitResumeConfig
from agents.errors import UserError
from agents.models.inputs import to_input
from agents.models.stats import model_stats
from agents.runtime import Agent, CalibratedModel, exit_thresholds
from agents.transport.activations import decode_activation, encode_activation, warm_up
from agents.transport.codecs import FORMATS
from agents.transport.envelope import Envelope, MessageError, Payload, encode
from agents.transport.images import decode_frame

log = logging.getLogger(__name__)


@dataclass
class SplitNet:
    """A device model this tier resumes: its weights' digest, the activation shape at each split point, how far."""

    net: CalibratedModel
    shapes: list[tuple[int, ...]]
    resume: SplitResumeConfig
    thresholds: list[float]

    @property
    def end(self) -> int:
        """The stage this tier stops before."""
        return self.resume.until if self.resume.until is not None else self.net.model.num_stages


@dataclass
class Item:
    """A queued request: the frame (uint8 image) or the activation, and for split requests the model and point."""

    env: Envelope
    data: Any  # np.ndarray (frame) or torch.Tensor (activation)
    key: tuple[str, int] | None = None  # (device model name, split point); None: a frame for this tier's model
    frame: Payload = b""  # the device's original frame, attached for a forward: frame onward path


class TierAgent(Agent):
    """An edge or cloud worker."""

    def __init__(self, cfg: DeploymentConfig, tier: str, agent_id: str, clock_skew_ms: float = 0.0) -> None:
        if tier not in cfg.tiers:
            raise UserError(f"no tier {tier!r} in the config; configured: {sorted(cfg.tiers)}")
        super().__init__(cfg, agent_id, tier, self._on_message, clock_skew_ms)
        self.tier = tier
        self.tcfg = cfg.tiers[tier]
        self.counters.update(dict.fromkeys(("answered", "forwarded", "dropped_queue_full", "chunked_messages"), 0))
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
        self.split_nets: dict[str, SplitNet] = {}
        for ref, resume in self.tcfg.split_models.items():
            self._load_split(ref, resume)
        if self.split_nets:  # compile the int8 decoders now, not on the first activation
            for codec in FORMATS:
                warm_up(codec)
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition()
        self._batches = 0
        self._processed = 0

    def _load_split(self, ref: str, resume: SplitResumeConfig) -> None:
        net = CalibratedModel(ref)
        n = net.model.num_stages
        if resume.until is not None and not 1 <= resume.until < n:
            raise UserError(f"tiers.{self.tier}.split_models.{ref}.until: {resume.until} is not within 1..{n - 1}")
        threshold = resume.threshold if resume.threshold is not None else self.tcfg.threshold
        if isinstance(threshold, list):  # per-exit lists are for the tier's own model
            threshold = None
        # No threshold: only the final exit answers, as for the tier's own model.
        thresholds = [float("inf") if threshold is None else float(threshold)] * net.model.num_exits
        shapes = [(1, *s) for s in model_stats(net.model).split_shapes]
        self.split_nets[net.name] = SplitNet(net, shapes, resume, thresholds)

    # --- paho thread: validate, enqueue, return -------------------------------------------
    def _on_message(self, topic: str, payload: bytes, _props: Any) -> None:
        now = self.now_ns()
        env = self.receive(topic, payload)
        if env is None:
            return
        try:
            if env.header.get("kind") != "request":
                raise MessageError("header", f"expected kind 'request', got {env.header.get('kind')!r}")
            if not self.topics.is_results(env.header.get("reply_to")):
                raise MessageError("header", f"reply_to {env.header.get('reply_to')!r} is not a device's results topic")
            if env.header.get("encoding") == "activation":
                item = self._split_item(env)
            else:
                item = Item(env, decode_frame(env, self.hw))
        except MessageError as exc:
            self.reject(exc.kind, f"on {topic}: {exc.detail}")
            return
        env.stamp(f"{self.tier}_receive", now)
        with self._cond:
            if len(self._queue) >= self.tcfg.queue_size:
                self._queue.popleft()
                self.count("dropped_queue_full")
            self._queue.append(item)
            self._cond.notify()

    def _split_item(self, env: Envelope) -> Item:
        """Validate a split request (model, digest, split point, frame attachment) and decode its activation."""
        h = env.header
        name = h.get("model")
        sn = self.split_nets.get(name) if isinstance(name, str) else None
        if sn is None:
            raise MessageError(
                "model", f"request {env.id} is split from {name!r}; this {self.tier} resumes {sorted(self.split_nets)}"
            )
        if h.get("model_digest") != sn.net.digest:
            raise MessageError(
                "digest",
                f"request {env.id} was computed with {name} weights {h.get('model_digest')!r}, this {self.tier} holds "
                f"{sn.net.digest!r}: deploy the same checkpoint on both sides",
            )
        split = h.get("split")
        if not isinstance(split, int) or isinstance(split, bool) or not 1 <= split < sn.end:
            raise MessageError("split", f"split point {split!r} of {name}: this {self.tier} resumes 1..{sn.end - 1}")
        frame_nbytes = h.get("frame_nbytes", 0)
        if not isinstance(frame_nbytes, int) or not 0 <= frame_nbytes <= len(env.payload):
            raise MessageError("header", f"frame_nbytes {frame_nbytes!r} does not fit the payload")
        cut = len(env.payload) - frame_nbytes
        act = decode_activation(Envelope(h, env.payload[:cut]), sn.shapes[split])
        return Item(env, act, (sn.net.name, split), env.payload[cut:])

    # --- worker ---------------------------------------------------------------------------
    def _next_batch(self) -> list[Item]:
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

    def process(self, batch: list[Item]) -> None:
        """Run the model(s) on a batch of decoded requests; answer or forward each."""
        if not batch:
            return
        exit_ns = self.now_ns()
        for item in batch:
            item.env.stamp(f"{self.tier}_queue_exit", exit_ns)
        groups: dict[tuple[str, int] | None, list[Item]] = {}
        for item in batch:
            groups.setdefault(item.key, []).append(item)
        for key, items in groups.items():
            if key is None:
                self._process_frames(items)
            else:
                self._process_split(self.split_nets[key[0]], key[1], items)
        self._batches += 1
        self._processed += len(batch)

    def _process_frames(self, items: list[Item]) -> None:
        start = self.now_ns()
        model = self.net.model
        # Without a threshold only the final exit can answer: the other heads are not worth running.
        first = 0 if self._early_exits else model.num_exits - 1
        with torch.inference_mode():
            x = to_input(np.stack([item.data for item in items]))
            logits = model(x) if self._early_exits else [model.heads[first](model.run(x, exits=False).activation)]
        exits = list(range(first, model.num_exits))
        conf, pred = _top(logits, [float(t) for t in self.net.temperatures[first:]])
        end = self.now_ns()
        for j, item in enumerate(items):
            item.env.stamp(f"{self.tier}_start", start)
            item.env.stamp(f"{self.tier}_end", end)
            chosen = next((i for i in range(len(exits) - 1) if conf[i][j] >= self.thresholds[exits[i]]), len(exits) - 1)
            if self.tcfg.forward_to and conf[chosen][j] < self.thresholds[exits[chosen]]:
                self._forward(item.env)
                continue
            self._reply(item.env, self.net.name, exits[chosen], pred[chosen][j], conf[chosen][j])

    def _process_split(self, sn: SplitNet, split: int, items: list[Item]) -> None:
        start = self.now_ns()
        model = sn.net.model
        exits = [i for i, stage in enumerate(model.exit_after) if split <= stage < sn.end]
        if sn.resume.until is None and sn.thresholds[0] == float("inf"):
            exits = [model.num_exits - 1]  # no threshold: only the final exit can answer
        with torch.inference_mode():
            x = torch.cat([item.data for item in items])
            if exits == [model.num_exits - 1] and sn.end == model.num_stages:
                activation = model.run(x, start=split, exits=False).activation
                logits = [model.heads[exits[0]](activation)]
            else:
                run = model.run(x, start=split, end=sn.end)
                activation = run.activation
                logits = [run.logits[i] for i in exits]
        conf, pred = _top(logits, [float(sn.net.temperatures[i]) for i in exits])
        end = self.now_ns()
        for j, item in enumerate(items):
            env = item.env
            env.stamp(f"{self.tier}_start", start)
            env.stamp(f"{self.tier}_end", end)
            chosen = next((i for i in range(len(exits)) if conf[i][j] >= sn.thresholds[exits[i]]), None)
            if chosen is not None:
                self._reply(env, sn.net.name, exits[chosen], pred[chosen][j], conf[chosen][j])
            elif sn.resume.until is not None:
                try:
                    header, payload = encode_activation(activation[j : j + 1], str(env.header["codec"]))
                except ValueError as exc:  # int8 cannot carry NaN or infinity: answer here, count it, go on
                    self.reject("payload", f"request {env.id} not forwarded, answered here: {exc}")
                    last = len(exits) - 1
                    self._reply(env, sn.net.name, exits[last], pred[last][j], conf[last][j])
                    continue
                onward = Envelope(
                    {**_without_tensor_fields(env.header), **header, "split": sn.end, "frame_nbytes": len(item.frame)},
                    b"".join((payload, item.frame)),
                    stamps=env.stamps,
                )
                self._forward(onward)
            elif sn.resume.forward == "frame" and item.frame:
                header = {k: v for k, v in _without_tensor_fields(env.header).items() if k not in _SPLIT_FIELDS}
                header["encoding"] = env.header.get("frame_encoding", "png")
                self._forward(Envelope(header, item.frame, stamps=env.stamps))
            else:  # the end of the model: its final exit answers, confident or not
                last = len(exits) - 1
                self._reply(env, sn.net.name, exits[last], pred[last][j], conf[last][j])

    def _process_guarded(self, batch: list[Item]) -> None:
        """:meth:`process`; an error no check foresaw is counted per request (``rejected_unexpected``), not raised.

        Those requests go unanswered: their devices answer them locally at the deadline.
        """
        try:
            self.process(batch)
        except Exception as exc:
            for item in batch:
                self._handler_failed(f"request {item.env.id}", exc)

    def _forward(self, env: Envelope) -> None:
        env.header["agents"] = {**_agents(env), self.tier: self.id}
        env.stamp(f"{self.tier}_forward", self.now_ns())
        self.send(self.topics.requests(str(self.tcfg.forward_to)), encode(env), env.id)
        self.count("forwarded")

    def _reply(self, env: Envelope, model: str, exit_index: int, prediction: int, confidence: float) -> None:
        reply = Envelope(
            {
                "id": env.id,
                "kind": "result",
                "tier": self.tier,
                "agent": self.id,
                "model": model,
                "exit": exit_index,
                "prediction": prediction,
                "confidence": round(confidence, 6),
                "request_bytes": len(env.payload),
                "agents": {**_agents(env), self.tier: self.id},  # whose clocks took the stamps
            },
            stamps=env.stamps,
        )
        reply.stamp("reply_publish", self.now_ns())
        self.link.publish(str(env.header["reply_to"]), encode(reply), qos=1)
        self.count("answered")

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
        self.serve_clock(self.tier)
        self.link.start()
        self.record_run(
            model=self.net.name,
            model_digest=self.net.digest,
            threshold=self.tcfg.threshold,
            forward_to=self.tcfg.forward_to,
            max_batch=self.tcfg.max_batch,
            max_wait_ms=self.tcfg.max_wait_ms,
            split_models=sorted(self.split_nets),
        )
        self.start_clock_sync([self.tcfg.forward_to] if self.tcfg.forward_to else [])
        log.info("%s %s serving %s with %s", self.tier, self.id, sub, self.net.name)
        try:
            while not self.stop.is_set():
                batch = self._next_batch()
                if batch:
                    self._process_guarded(batch)
                self.maybe_publish_health()
            drain_until = time.monotonic() + drain_s
            while time.monotonic() < drain_until:
                with self._cond:
                    batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.tcfg.max_batch))]
                if not batch:
                    break
                self._process_guarded(batch)
        finally:  # also after an error: telemetry closed, the link says "stopped"
            self.maybe_publish_health(0)
            self.close_telemetry()
            self.link.close()
        log.info("%s %s stopped: %s", self.tier, self.id, dict(self.counters))
        return 0


_SPLIT_FIELDS = ("model", "model_digest", "split", "frame_encoding", "frame_nbytes")
_TENSOR_FIELDS = ("encoding", "codec", "shape", "scale", "zero_point", "raw_nbytes", "dtype", "nbytes")


def _agents(env: Envelope) -> dict[str, str]:
    """The agent of each tier a request went through (``agents`` header), malformed entries left out."""
    seen = env.header.get("agents")
    if not isinstance(seen, dict):
        return {}
    return {k: v for k, v in seen.items() if isinstance(k, str) and isinstance(v, str)}


def _without_tensor_fields(header: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in header.items() if k not in _TENSOR_FIELDS}


def _top(logits: list[torch.Tensor], temps: list[float]) -> tuple[list[list[float]], list[list[int]]]:
    """Per exit and request, the calibrated confidence and predicted class, as Python lists."""
    with torch.inference_mode():
        top = [torch.softmax(lg / t, dim=1).max(dim=1) for lg, t in zip(logits, temps, strict=True)]
    # (exits, batch) as Python lists: indexing tensors element by element costs more than the softmax.
    return [t.values.tolist() for t in top], [t.indices.tolist() for t in top]
