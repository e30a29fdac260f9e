"""Clock offsets between agents over MQTT: the NTP four-timestamp exchange, minimum round trip kept.

A requester publishes ``clock_ping`` (t1, its own clock) to a tier's clock topic; every
worker of that tier answers at once, on its network thread, with ``clock_pong``
carrying t2 (its receive time) and t3 (its send time); the requester stamps t4 when
the answer arrives. Then, per sample::

    offset = ((t2 - t1) + (t3 - t4)) / 2      # the peer's clock minus ours
    rtt    = (t4 - t1) - (t3 - t2)            # the time on the wire, both ways

The error of ``offset`` is at most ``rtt / 2`` (all of it if the path were one-sided),
so of several samples the one with the smallest round trip is kept: the one least
delayed by queues in the broker or the agents. Rounds repeat every ``interval_s``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.transport.envelope import Envelope, MessageError, encode

log = logging.getLogger(__name__)

#: Seconds before the next round when a tier gave no answer in the last one (instead of the interval).
RETRY_S = 1.0

Publish = Callable[[str, bytes], None]


@dataclass(frozen=True)
class ClockSample:
    """One exchange: the peer's clock minus ours, and the round trip, in ns."""

    offset_ns: int
    rtt_ns: int


def ntp_sample(t1: int, t2: int, t3: int, t4: int) -> ClockSample:
    """The offset and round trip of one four-timestamp exchange (t1, t4 ours; t2, t3 the peer's)."""
    return ClockSample(offset_ns=((t2 - t1) + (t3 - t4)) // 2, rtt_ns=(t4 - t1) - (t3 - t2))


@dataclass(frozen=True)
class ClockEstimate:
    """The best sample of one round with one peer."""

    peer: str
    peer_role: str
    offset_ns: int
    rtt_ns: int
    samples: int
    time_ns: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ms figures for people."""
        return {
            "time_ns": self.time_ns,
            "peer": self.peer,
            "peer_role": self.peer_role,
            "offset_ms": self.offset_ns / 1e6,
            "rtt_ms": self.rtt_ns / 1e6,
            "samples": self.samples,
        }


def pong(ping: Envelope, agent_id: str, role: str, t2: int, now_ns: Callable[[], int]) -> tuple[str, bytes]:
    """The answer to a ``clock_ping`` received at ``t2``: (reply topic, message); t3 taken last."""
    h = ping.header
    header = {"kind": "clock_pong", "id": ping.id, "agent": agent_id, "role": role, "t2": t2}
    header["t3"] = now_ns()
    return str(h["reply_to"]), encode(Envelope(header))


class ClockSync:
    """Estimates this agent's clock offset to every worker of the given tiers, periodically.

    ``publish`` sends a message (QoS 0: a lost ping is just a sample fewer); the agent
    passes each ``clock_pong`` it receives to :meth:`on_pong`; ``on_estimate`` gets each
    round's best sample per peer.
    """

    def __init__(
        self,
        publish: Publish,
        ping_topics: dict[str, str],
        reply_topic: str,
        agent_id: str,
        now_ns: Callable[[], int],
        on_estimate: Callable[[ClockEstimate], None],
        samples: int = 8,
        interval_s: float = 30.0,
        spacing_s: float = 0.05,
        history_rounds: int = 8,
        ready: Callable[[float], bool] | None = None,
    ) -> None:
        self.publish = publish
        self.ping_topics = ping_topics  # tier -> its clock topic
        self.reply_topic = reply_topic
        self.agent_id = agent_id
        self.now_ns = now_ns
        self.on_estimate = on_estimate
        self.samples = samples
        self.interval_s = interval_s
        self.spacing_s = spacing_s
        self._lock = threading.Lock()
        self._sent: dict[str, int] = {}  # ping id -> t1
        self._round: dict[str, list[ClockSample]] = {}
        self._roles: dict[str, str] = {}
        # The last rounds' estimates per peer; corrections use the one with the smallest round trip, so a
        # round whose every sample queued behind traffic (a busy link) does not pull the offset away.
        self._history: dict[str, deque[ClockEstimate]] = {}
        self.history_rounds = history_rounds
        self.ready = ready  # waits up to N s for the broker link (QoS 0 sent while disconnected is lost)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clock-sync", daemon=True)
        self.rejected = 0

    def start(self) -> None:
        """Begin the rounds (the first at once)."""
        self._thread.start()

    def stop(self) -> None:
        """End the rounds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def offset_ns(self, peer: str) -> int | None:
        """``peer``'s clock minus ours: of the last rounds' estimates, the one with the smallest round trip."""
        est = self.best(peer)
        return None if est is None else est.offset_ns

    def best(self, peer: str) -> ClockEstimate | None:
        """The estimate used for ``peer`` (minimum round trip over the last ``history_rounds`` rounds)."""
        with self._lock:  # the clock thread appends to the history while agents read it
            history = tuple(self._history.get(peer, ()))
        return min(history, key=lambda e: e.rtt_ns) if history else None

    def on_pong(self, env: Envelope, t4: int) -> None:
        """Take an answer received at ``t4`` (paho's thread); answers to pings we did not send are refused."""
        h = env.header
        with self._lock:
            t1 = self._sent.get(env.id)
        try:
            if t1 is None:
                raise MessageError("header", f"clock_pong {env.id!r} answers no ping of ours (late or forged)")
            t2, t3 = h["t2"], h["t3"]
            peer, role = str(h["agent"]), str(h.get("role", ""))
            if not (isinstance(t2, int) and isinstance(t3, int)) or t3 < t2:
                raise MessageError("header", f"clock_pong from {peer}: t2/t3 must be integers with t3 >= t2")
        except KeyError as exc:
            raise MessageError("header", f"clock_pong lacks {exc}") from None
        sample = ntp_sample(t1, t2, t3, t4)
        if sample.rtt_ns < 0:
            raise MessageError("header", f"clock_pong from {peer}: negative round trip")
        with self._lock:
            self._round.setdefault(peer, []).append(sample)
            self._roles[peer] = role

    def run_round(self) -> list[ClockEstimate]:
        """Ping every tier ``samples`` times, wait for the answers, keep each peer's minimum-RTT sample."""
        with self._lock:
            self._round.clear()
            self._sent.clear()
        for _ in range(self.samples):
            for topic in self.ping_topics.values():
                ping_id = uuid.uuid4().hex[:12]
                header = {"kind": "clock_ping", "id": ping_id, "agent": self.agent_id, "reply_to": self.reply_topic}
                t1 = self.now_ns()
                with self._lock:
                    self._sent[ping_id] = t1
                self.publish(topic, encode(Envelope(header)))
            if self._stop.wait(self.spacing_s):
                break
        self._stop.wait(min(1.0, 10 * self.spacing_s))  # the last answers
        out = []
        with self._lock:
            rounds, roles = dict(self._round), dict(self._roles)
            self._sent.clear()  # what comes later answers a finished round
        now = self.now_ns()
        for peer, samples in rounds.items():
            best = min(samples, key=lambda s: s.rtt_ns)
            est = ClockEstimate(peer, roles.get(peer, ""), best.offset_ns, best.rtt_ns, len(samples), now)
            with self._lock:
                self._history.setdefault(peer, deque(maxlen=self.history_rounds)).append(est)
            out.append(est)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.ready is not None and not self.ready(1.0):
                continue
            wait_s = self.interval_s
            try:
                estimates = self.run_round()
                for est in estimates:
                    self.on_estimate(est)
                # A tier that did not answer has usually not subscribed yet (agents start together, and a
                # ping is QoS 0): ask again soon rather than a whole interval later.
                if set(self.ping_topics) - {est.peer_role for est in estimates}:
                    wait_s = min(self.interval_s, RETRY_S)
            except Exception:  # a failed round must not end clock sync for the agent's lifetime
                log.exception("clock sync round failed; next round in %.0f s", self.interval_s)
            self._stop.wait(wait_s)
