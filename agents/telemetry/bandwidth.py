"""Uplink bandwidth between an agent and the tier it sends to, timed at the receiver over MQTT.

The sender publishes a train of ``messages`` probes of ``size`` bytes back to back to
the tier's clock topic; each worker notes when each probe arrives, on its own clock,
and once the train is complete (or has stopped arriving) answers with the bytes that
arrived after the first probe and the time between the first arrival and the last.
Their ratio is the rate the path delivered, the bottleneck's: timed at the receiver
only, so the two clocks need not agree (as Neurosurgeon's public reimplementation
measures its uplink). A train repeats every ``interval_s``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.transport.envelope import Envelope, MessageError, encode

log = logging.getLogger(__name__)

MAX_PROBE_BYTES = 1 << 20


@dataclass(frozen=True)
class BandwidthEstimate:
    """One train's result from one receiver."""

    peer: str
    peer_role: str
    mbit_s: float
    bytes: int
    seconds: float
    messages: int
    time_ns: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "time_ns": self.time_ns,
            "peer": self.peer,
            "peer_role": self.peer_role,
            "mbit_s": self.mbit_s,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "messages": self.messages,
        }


@dataclass
class _Train:
    reply_to: str
    count: int
    first_ns: int
    last_ns: int
    bytes_after_first: int = 0
    received: int = 1
    started: float = field(default_factory=time.monotonic)


class ProbeReceiver:
    """The receiving side (every tier worker): times trains, answers with what arrived."""

    def __init__(self, agent_id: str, role: str, publish: Callable[[str, bytes], None], timeout_s: float = 5.0) -> None:
        self.agent_id = agent_id
        self.role = role
        self.publish = publish
        self.timeout_s = timeout_s
        self._trains: dict[str, _Train] = {}

    def on_probe(self, env: Envelope, arrived_ns: int) -> None:
        """Take one probe (paho's thread); answer when its train is complete."""
        h = env.header
        train_id, seq, count, reply_to = h.get("train"), h.get("seq"), h.get("count"), h.get("reply_to")
        if not (isinstance(train_id, str) and isinstance(seq, int) and isinstance(count, int) and 2 <= count <= 64):
            raise MessageError("header", "bw_probe needs train (str), seq (int) and count (2..64)")
        if not isinstance(reply_to, str):
            raise MessageError("header", "bw_probe without reply_to")
        train = self._trains.get(train_id)
        if train is None:
            self._expire()
            self._trains[train_id] = _Train(reply_to, count, arrived_ns, arrived_ns)
            return
        train.last_ns = arrived_ns
        train.bytes_after_first += len(env.payload)
        train.received += 1
        if train.received >= train.count or seq >= train.count - 1:
            self._answer(train_id, self._trains.pop(train_id))

    def _answer(self, train_id: str, train: _Train) -> None:
        header = {
            "kind": "bw_result",
            "id": train_id,
            "agent": self.agent_id,
            "role": self.role,
            "bytes": train.bytes_after_first,
            "ns": train.last_ns - train.first_ns,
            "messages": train.received,
        }
        self.publish(train.reply_to, encode(Envelope(header)))

    def _expire(self) -> None:
        """Trains that stopped arriving: answer with what came (lost probes shorten the train, not the estimate)."""
        now = time.monotonic()
        for train_id in [t for t, tr in self._trains.items() if now - tr.started > self.timeout_s]:
            train = self._trains.pop(train_id)
            if train.received >= 2:
                self._answer(train_id, train)


class BandwidthProbe:
    """The sending side: a train to a tier every ``interval_s``; the latest estimate per receiver."""

    def __init__(
        self,
        publish: Callable[[str, bytes], None],
        topic: str,
        reply_topic: str,
        agent_id: str,
        on_estimate: Callable[[BandwidthEstimate], None],
        messages: int = 4,
        size: int = 16384,
        interval_s: float = 30.0,
        ready: Callable[[float], bool] | None = None,
    ) -> None:
        self.publish = publish
        self.ready = ready  # waits up to N s for the broker link (QoS 0 sent while disconnected is lost)
        self.topic = topic
        self.reply_topic = reply_topic
        self.agent_id = agent_id
        self.on_estimate = on_estimate
        self.messages = messages
        self.size = min(size, MAX_PROBE_BYTES)
        self.interval_s = interval_s
        self._payload = os.urandom(self.size)  # incompressible, so no compression on the way flatters the link
        self._sent: deque[str] = deque(maxlen=64)  # ids of recent trains: answers to others are refused
        self._latest: BandwidthEstimate | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bandwidth-probe", daemon=True)

    @property
    def latest_mbit_s(self) -> float | None:
        """The most recent estimate (any receiver), Mbit/s."""
        return None if self._latest is None else self._latest.mbit_s

    def start(self) -> None:
        """Begin sending trains (the first at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def send_train(self) -> str:
        """Publish one train; its id."""
        train_id = uuid.uuid4().hex[:12]
        self._sent.append(train_id)
        for seq in range(self.messages):
            header = {
                "kind": "bw_probe",
                "id": f"{train_id}-{seq}",
                "train": train_id,
                "seq": seq,
                "count": self.messages,
                "reply_to": self.reply_topic,
            }
            self.publish(self.topic, encode(Envelope(header, self._payload)))
        return train_id

    def on_result(self, env: Envelope) -> None:
        """Take a receiver's answer (paho's thread)."""
        h = env.header
        if env.id not in self._sent:
            raise MessageError("header", f"bw_result {env.id!r} answers no train of ours")
        nbytes, ns, messages = h.get("bytes"), h.get("ns"), h.get("messages")
        if not (isinstance(nbytes, int) and isinstance(ns, int) and isinstance(messages, int)) or nbytes < 0:
            raise MessageError("header", "bw_result needs integer bytes, ns and messages")
        if ns <= 0 or messages < 2:
            return  # too few probes, or all in one read: no rate to tell
        est = BandwidthEstimate(
            peer=str(h.get("agent", "")),
            peer_role=str(h.get("role", "")),
            mbit_s=nbytes * 8 / (ns / 1e9) / 1e6,
            bytes=nbytes,
            seconds=ns / 1e9,
            messages=messages,
            time_ns=time.time_ns(),
        )
        self._latest = est
        self.on_estimate(est)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.ready is not None and not self.ready(1.0):
                continue
            try:
                self.send_train()
            except Exception:  # a failed train must not end probing for the agent's lifetime
                log.exception("bandwidth probe failed; next in %.0f s", self.interval_s)
            self._stop.wait(self.interval_s)
