"""What every agent process shares: the stop event, signal handling, the broker link, counters and live status."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agents.config import DeploymentConfig, link_settings
from agents.cpulimit import CpuLimits
from agents.errors import UserError
from agents.models.checkpoint import load_checkpoint, temperatures
from agents.models.staged import StagedModel
from agents.telemetry.bandwidth import BandwidthEstimate, BandwidthProbe, ProbeReceiver
from agents.telemetry.clock import ClockEstimate, ClockSync, pong
from agents.telemetry.recorder import AgentTelemetry, config_digest
from agents.transport.chunks import Reassembler, split_message
from agents.transport.envelope import REJECT_KINDS, Envelope, MessageError, decode
from agents.transport.mqtt import MessageHandler, MqttLink
from agents.transport.topics import Topics, publishable

log = logging.getLogger(__name__)


def exit_thresholds(threshold: float | list[float], num_exits: int, what: str) -> list[float]:
    """One threshold per exit from a single value or a per-exit list."""
    if isinstance(threshold, list):
        if len(threshold) != num_exits:
            raise UserError(f"{what}: {len(threshold)} thresholds for a model with {num_exits} exits")
        return list(threshold)
    return [float(threshold)] * num_exits


class CalibratedModel:
    """A checkpoint with its temperatures: calibrated probabilities per exit."""

    def __init__(self, ref: str) -> None:
        self.model: StagedModel
        self.model, self.meta = load_checkpoint(ref)
        self.temperatures = temperatures(self.meta, self.model.num_exits)
        self.name = self.model.name
        # Of the bytes load_checkpoint loaded, so a swapped file cannot pass for the recorded one.
        self.digest = str(self.meta["_weights_sha256"])[:16]


class Agent:
    """Base of every agent: one stop event set by SIGTERM/SIGINT, a broker link, counters, periodic health."""

    def __init__(
        self,
        cfg: DeploymentConfig,
        agent_id: str,
        role: str,
        handler: MessageHandler,
        clock_skew_ms: float = 0.0,
        via: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.id = agent_id
        self.role = role
        self.topics = Topics(cfg.deployment)
        # Every wall-clock stamp this agent takes; a skew shifts it (experiments with clocks that disagree).
        skew_ns = round(clock_skew_ms * 1e6)
        self.now_ns: Callable[[], int] = time.time_ns if skew_ns == 0 else (lambda: time.time_ns() + skew_ns)
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.telemetry = AgentTelemetry(cfg, agent_id, role, self.run_id)
        self.clock: ClockSync | None = None
        self.bandwidth: BandwidthProbe | None = None
        self._probes = ProbeReceiver(agent_id, role, lambda topic, wire: self.link.publish(topic, wire, qos=0))
        self.cpu_limits = CpuLimits()  # set by whoever applied limits to this process (run metadata)
        self.stop = threading.Event()
        self.counters: Counter[str] = Counter({f"rejected_{kind}": 0 for kind in REJECT_KINDS})
        self._counter_lock = threading.Lock()
        self._last_warn: dict[str, float] = {}
        self._started = time.monotonic()
        self._next_health = 0.0
        self.chunks = Reassembler(cfg.broker.max_payload_bytes, cfg.broker.reassembly_timeout_s)
        self._chunk_drops_seen = 0
        self._chunk_lock = threading.Lock()
        self.link = MqttLink(
            f"cascade-{cfg.deployment}-{agent_id}-{os.getpid()}",
            link_settings(cfg, via),
            handler,
            status_topic=self.topics.status(agent_id),
            on_error=self._handler_failed,
        )

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT set the stop event; every loop waits on it."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def count(self, key: str, n: int = 1) -> None:
        """Add to a counter (thread-safe: paho's thread and the worker both count)."""
        with self._counter_lock:
            self.counters[key] += n

    def reject(self, kind: str, detail: str) -> None:
        """Count a rejected message by kind; log at most once per second per kind."""
        self.count(f"rejected_{kind}")
        now = time.monotonic()
        if now - self._last_warn.get(kind, 0.0) >= 1.0:
            self._last_warn[kind] = now
            log.warning(
                "%s %s rejected a message (%s): %s [%d so far]",
                self.role,
                self.id,
                kind,
                detail,
                self.counters[f"rejected_{kind}"],
            )

    def _handler_failed(self, topic: str, exc: Exception) -> None:
        """A message whose handling raised what no check foresaw: counted and logged, and the agent goes on."""
        self.reject("unexpected", f"on {topic}: {type(exc).__name__}: {exc}")
        if self.counters["rejected_unexpected"] == 1:  # the first with its traceback, for the bug report
            log.error("%s %s: the first unexpected error, in full", self.role, self.id, exc_info=exc)

    def receive(self, topic: str, payload: bytes) -> Envelope | None:
        """Decode a message, joining chunks; None when it was rejected (and counted) or more chunks are due.

        Clock-sync messages are handled here, for every agent, and also give None.
        """
        arrived = self.now_ns()
        try:
            env = decode(payload, self.cfg.broker.max_payload_bytes)
            kind = env.header.get("kind")
            if kind == "chunk":
                whole = self.chunks.add(env)
                self._count_chunk_drops()
                if whole is None:
                    return None
                env = decode(whole, self.cfg.broker.max_payload_bytes)
            elif kind == "clock_ping":
                self._answer_ping(env, arrived)
                return None
            elif kind == "clock_pong":
                if self.clock is None:
                    raise MessageError("header", "clock_pong, but this agent sends no pings")
                self.clock.on_pong(env, arrived)
                return None
            elif kind == "bw_probe":
                self._check_reply_to(env)
                self._probes.on_probe(env, arrived)
                return None
            elif kind == "bw_result":
                if self.bandwidth is None:
                    raise MessageError("header", "bw_result, but this agent sends no probes")
                self.bandwidth.on_result(env)
                return None
        except MessageError as exc:
            self.reject(exc.kind, f"on {topic}: {exc.detail}")
            return None
        return env

    def _check_reply_to(self, env: Envelope) -> None:
        """Only an agent's clock topic of this deployment: a probe must not make us publish anywhere else."""
        reply_to = env.header.get("reply_to")
        prefix = f"{self.topics.root}/agents/"
        if not publishable(reply_to) or not reply_to.startswith(prefix) or not reply_to.endswith("/clock"):
            kind = env.header.get("kind")
            raise MessageError("header", f"{kind} with reply_to {reply_to!r}, not an agent's clock topic")

    def _answer_ping(self, env: Envelope, arrived: int) -> None:
        self._check_reply_to(env)
        topic, wire = pong(env, self.id, self.role, arrived, self.now_ns)
        self.link.publish(topic, wire, qos=0)

    def serve_clock(self, tier: str) -> None:
        """Answer the clock pings sent to ``tier`` (call before the link starts)."""
        self.link.subscribe(self.topics.clock(tier), qos=0)

    def start_clock_sync(self, tiers: list[str]) -> None:
        """Estimate this agent's clock offset to every worker of ``tiers``, periodically (after the link starts)."""
        ccfg = self.cfg.telemetry.clock
        if not tiers or not ccfg.enabled:
            return
        reply = self.topics.clock_replies(self.id)
        self.link.subscribe(reply, qos=0)
        self.clock = ClockSync(
            publish=lambda topic, wire: self.link.publish(topic, wire, qos=0),
            ping_topics={t: self.topics.clock(t) for t in dict.fromkeys(tiers)},
            reply_topic=reply,
            agent_id=self.id,
            now_ns=self.now_ns,
            on_estimate=self._clock_estimate,
            samples=ccfg.samples,
            interval_s=ccfg.interval_s,
            ready=self.link.wait_connected,
        )
        self.clock.start()

    def start_bandwidth_probe(self, tier: str) -> None:
        """Estimate the uplink to ``tier`` periodically (after the link starts); answers come to the clock topic."""
        bcfg = self.cfg.telemetry.bandwidth
        if not bcfg.enabled:
            return
        reply = self.topics.clock_replies(self.id)
        self.link.subscribe(reply, qos=0)
        self.bandwidth = BandwidthProbe(
            publish=lambda topic, wire: self.link.publish(topic, wire, qos=0),
            topic=self.topics.clock(tier),
            reply_topic=reply,
            agent_id=self.id,
            on_estimate=self._bandwidth_estimate,
            messages=bcfg.messages,
            size=bcfg.bytes,
            interval_s=bcfg.interval_s,
            ready=self.link.wait_connected,
        )
        self.bandwidth.start()

    def _bandwidth_estimate(self, est: BandwidthEstimate) -> None:
        self.telemetry.bandwidth(est)
        log.debug("%s %s: uplink to %s %.2f Mbit/s", self.role, self.id, est.peer, est.mbit_s)

    def _clock_estimate(self, est: ClockEstimate) -> None:
        self.telemetry.clock(est)
        log.debug(
            "%s %s: clock of %s is %+.3f ms from ours (round trip %.3f ms, %d samples)",
            self.role,
            self.id,
            est.peer,
            est.offset_ns / 1e6,
            est.rtt_ns / 1e6,
            est.samples,
        )

    def record_run(self, **meta: Any) -> None:
        """Record this run's metadata (config digest added) in the run directory and InfluxDB."""
        cpu = self.cpu_limits
        limits = {"cpu_quota": cpu.quota, "cores": list(cpu.cores) if cpu.cores else None, "threads": cpu.threads}
        self.telemetry.run_started({"config_digest": config_digest(self.cfg), **meta, **limits})

    def close_telemetry(self) -> None:
        """Stop clock sync, take a last health sample, close the files and the InfluxDB sink."""
        if self.clock is not None:
            self.clock.stop()
        if self.bandwidth is not None:
            self.bandwidth.stop()
        self.telemetry.health({**self.health(), **self.telemetry.cpu_memory()})
        self.telemetry.close()

    def send(self, topic: str, wire: bytes, message_id: str, qos: int = 1, **kwargs: Any) -> None:
        """Publish an encoded envelope, as chunks when it is larger than ``broker.chunk_bytes``."""
        parts = split_message(wire, message_id, self.cfg.broker.chunk_bytes)
        if len(parts) > 1:
            self.count("chunked_messages")
        for part in parts:
            self.link.publish(topic, part, qos=qos, **kwargs)

    def _count_chunk_drops(self) -> None:
        with self._chunk_lock:
            new = self.chunks.dropped - self._chunk_drops_seen
            self._chunk_drops_seen += new
        if new > 0:
            self.reject("incomplete_chunks", f"{new} incomplete chunk set(s) dropped (timeout or too many at once)")
            if new > 1:
                self.count("rejected_incomplete_chunks", new - 1)

    def health(self) -> dict[str, Any]:
        """The live status published on the health topic; subclasses add their fields."""
        with self._counter_lock:
            counters = dict(self.counters)
        h: dict[str, Any] = {
            "agent": self.id,
            "role": self.role,
            "run": self.run_id,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "connected": self.link.connected.is_set(),
            "counters": counters,
        }
        if self.link.dropped_publishes:
            counters["dropped_publishes"] = self.link.dropped_publishes
        if self.telemetry.sink is not None:
            h.update(self.telemetry.sink.status())
        if self.telemetry.errors:
            h["telemetry_errors"] = self.telemetry.errors
        if self.bandwidth is not None and self.bandwidth.latest_mbit_s is not None:
            h["uplink_mbit"] = round(self.bandwidth.latest_mbit_s, 3)
        return h

    def maybe_publish_health(self, every_s: float = 1.0) -> None:
        """Publish :meth:`health` if ``every_s`` has passed since the last time."""
        now = time.monotonic()
        if now >= self._next_health:
            self._next_health = now + every_s
            self.chunks.expire()
            self._count_chunk_drops()
            health = self.health()
            health.update(self.telemetry.cpu_memory())
            if self.telemetry.due():
                self.telemetry.health(health)
            self.link.publish(self.topics.health(self.id), json.dumps(health).encode(), qos=0)
