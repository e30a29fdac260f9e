"""``cascade status``: every agent of a deployment at a glance, from its MQTT status and health topics.

Each agent keeps a retained availability on ``.../agents/<id>/status`` (``online``,
``offline`` from its last will, ``stopped`` on a clean exit) and publishes its live
counters on ``.../agents/<id>/health`` every second (docs/topics.md). The board folds
both into one row per agent; an agent that says ``online`` but has sent no health for
``stale_s`` is shown as ``stale`` (hung, or cut off from the broker without its will
firing yet). Nothing is published: the watcher has no availability topic of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agents.config import link_settings, load_config
from agents.errors import UserError
from agents.transport.mqtt import MqttLink
from agents.transport.topics import Topics

STALE_S = 5.0  # five missed health messages (one a second)
COLUMNS = (
    ("agent", "agent"),
    ("role", "role"),
    ("state", "state"),
    ("seen_s", "seen"),
    ("uptime", "uptime"),
    ("fps", "fps"),
    ("load", "load"),
    ("answered", "answered"),
    ("passed_on", "passed on"),
    ("timeouts", "timeouts"),
    ("rejected", "rejected"),
    ("cpu_percent", "cpu %"),
    ("rss_mb", "rss MB"),
    ("aoi_ms", "AoI ms"),
)


@dataclass
class _Agent:
    state: str = "unknown"  # the retained availability, until one arrives
    health: dict[str, Any] = field(default_factory=dict)
    seen: float | None = None  # monotonic time of the last health message
    rate: tuple[float, int] | None = None  # (time, handled) of the previous health, for a tier's rate
    fps: float | None = None


class StatusBoard:
    """One view per agent from status and health messages; fed from paho's thread, read from another."""

    def __init__(self, deployment: str, stale_s: float = STALE_S) -> None:
        self.prefix = f"{Topics(deployment).root}/agents/"
        self.stale_s = stale_s
        self.malformed = 0
        self._agents: dict[str, _Agent] = {}
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, now: float | None = None) -> None:
        """Take one message from ``.../agents/<id>/status`` or ``.../agents/<id>/health``."""
        if not topic.startswith(self.prefix):
            return
        agent_id, _, kind = topic[len(self.prefix) :].partition("/")
        now = time.monotonic() if now is None else now
        if kind == "status":
            with self._lock:
                self._agents.setdefault(agent_id, _Agent()).state = payload.decode("utf-8", "replace")[:16] or "cleared"
            return
        if kind != "health":
            return
        try:  # anyone allowed to publish there could send anything: count it, never raise on paho's thread
            health = json.loads(payload)
            if not isinstance(health, dict) or not isinstance(health.get("counters", {}), dict):
                raise ValueError("not a health object")
            handled = _handled(health)
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested deep
            with self._lock:
                self.malformed += 1
            return
        with self._lock:
            a = self._agents.setdefault(agent_id, _Agent())
            if a.rate is not None and now > a.rate[0] and handled >= a.rate[1]:
                a.fps = (handled - a.rate[1]) / (now - a.rate[0])
            a.rate, a.health, a.seen = (now, handled), health, now

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """One dict per agent (sorted by role, then id): the columns of :data:`COLUMNS` plus ``health``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            agents = {k: (v.state, dict(v.health), v.seen, v.fps) for k, v in self._agents.items()}
        out = []
        for agent_id, (state, h, seen, rate) in agents.items():
            counters: dict[str, Any] = h.get("counters", {})
            age = None if seen is None else now - seen
            if state in ("online", "unknown") and age is not None:
                state = "stale" if age > self.stale_s else "online"
            if state == "online" and h.get("connected") is False:
                state = "reconnecting"  # its health came from before the link dropped
            rejected = [v for k, v in counters.items() if k.startswith("rejected_") and _number(v) is not None]
            out.append(
                {
                    "agent": agent_id,
                    "role": str(h.get("role", ""))[:16],
                    "state": state,
                    "seen_s": None if age is None else round(age, 1),
                    "uptime": _number(h.get("uptime_s")),
                    "fps": _number(h.get("fps", None if rate is None else round(rate, 1))),
                    "load": _number(h.get("in_flight", h.get("queue_depth"))),
                    "answered": _number(h.get("answered", counters.get("answered"))),
                    "passed_on": _number(counters.get("offloaded", counters.get("forwarded"))),
                    "timeouts": _number(counters.get("answered_timeout")),
                    "rejected": sum(rejected) if h else None,
                    "cpu_percent": _number(h.get("cpu_percent")),
                    "rss_mb": _number(h.get("rss_mb")),
                    "aoi_ms": _number(h.get("aoi_ms")),
                    "health": h,
                }
            )
        order = {"device": 0, "edge": 1, "cloud": 2}
        return sorted(out, key=lambda r: (order.get(str(r["role"]), 3), str(r["role"]), r["agent"]))


#: Counts beyond this are not counts: a rate computed from one would overflow a float.
MAX_COUNT = 2**53


def _count(value: Any) -> int:
    """A counter from a health message as an int; ValueError for what is not one (Infinity, NaN, 1e400, -1)."""
    try:
        n = int(value)
    except OverflowError:  # int(Infinity): JSON from json.loads may hold it
        raise ValueError(f"{value!r} is not a count") from None
    if not 0 <= n <= MAX_COUNT:
        raise ValueError(f"{value!r} is not a count")
    return n


def _handled(health: dict[str, Any]) -> int:
    """Frames an agent has finished: a device's answers of every outcome, a tier's answers and forwards."""
    counters = health.get("counters", {})
    if "answered" in health:  # a device's total
        return _count(health["answered"])
    return _count(counters.get("answered", 0)) + _count(counters.get("forwarded", 0))


def _number(value: Any) -> int | float | None:
    """``value`` if it is a finite number (not a bool), else None: a health field shown as ``-``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (``-`` where an agent does not report a column)."""
    cells = [[title for _, title in COLUMNS]]
    for r in rows:
        cells.append([_cell(key, r.get(key)) for key, _ in COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if key == "uptime":
        s = int(value)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``cascade status``: a live table until Ctrl-C, or with ``--once`` one table after ``--wait`` seconds."""
    cfg = load_config(args.config)
    if not args.verbose:  # the table is the output; "connected to ..." lines would only interleave with it
        logging.getLogger("agents.transport.mqtt").setLevel(logging.WARNING)
    board = StatusBoard(cfg.deployment, stale_s=args.stale)
    topics = Topics(cfg.deployment)
    settings = link_settings(cfg)
    link = MqttLink(f"cascade-{cfg.deployment}-status-{os.getpid()}", settings, lambda t, p, _: board.feed(t, p))
    link.subscribe(f"{topics.root}/agents/+/status", qos=1)
    link.subscribe(f"{topics.root}/agents/+/health", qos=0)
    link.start()
    try:
        if not link.wait_connected(args.wait):
            account = f"account from CASCADE_MQTT_USERNAME or broker.username, password from {cfg.broker.password_env}"
            if link.refusal:
                raise UserError(
                    f"the broker at {settings.host}:{settings.port} refused the connection: {link.refusal} ({account})"
                )
            raise UserError(
                f"cannot reach the broker at {settings.host}:{settings.port} within {args.wait:g} s "
                f"(broker in {args.config}; {account}; TLS from broker.tls)"
            )
        # Retained statuses arrive at once, health within a second: a first table drawn
        # before then would show nothing.
        time.sleep(args.wait if args.once else min(args.wait, 1.2))
        if args.once:
            rows = board.rows()
            if args.json:
                _write_json(args.json, rows, out)
            else:
                out.write(_titled(cfg.deployment, rows, board) + "\n")
            return _check_expected(rows, args.expect)
        tty = out.isatty()
        while True:
            text = _titled(cfg.deployment, board.rows(), board)
            out.write(("\x1b[H\x1b[2J" if tty else "\n") + text + "\n")
            out.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        link.close()


def _check_expected(rows: list[dict[str, Any]], expect: str | None) -> int:
    """0 when every agent in the comma-separated ``expect`` is online, else 1 with the others named on stderr."""
    if not expect:
        return 0
    states = {r["agent"]: r["state"] for r in rows}
    missing = [f"{a} ({states.get(a, 'never seen')})" for a in expect.split(",") if a and states.get(a) != "online"]
    if missing:
        print(f"not online: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _titled(deployment: str, rows: list[dict[str, Any]], board: StatusBoard) -> str:
    online = sum(r["state"] == "online" for r in rows)
    head = f"deployment {deployment}: {len(rows)} agents, {online} online  ({time.strftime('%H:%M:%S')})"
    if board.malformed:
        head += f"; {board.malformed} malformed health messages ignored"
    return head + "\n" + (render(rows) if rows else "no agent has published on this broker yet")


def _write_json(target: str, rows: list[dict[str, Any]], out: TextIO) -> None:
    text = json.dumps(rows, indent=2)
    if target == "-":
        out.write(text + "\n")
    else:
        Path(target).write_text(text + "\n")
