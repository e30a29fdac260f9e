"""A userspace TCP proxy that emulates one constrained network link: delay, jitter, loss and rate, no root needed.

Each accepted connection is paired with a new connection to the upstream (the
broker) and each direction is shaped on its own: a rate token bucket, a delay
line and, instead of dropping bytes (a TCP stream cannot lose any), loss as
TCP experiences it, a segment held back one retransmission timeout.

Threads, not asyncio: a thread sleeping on a condition wakes within ~0.1-0.2 ms
of its deadline here, asyncio's epoll timeout has whole-millisecond granularity
(~0.4 ms median late, measured), which would use up most of the 1 ms accuracy
budget on its own. Four threads per connection (a reader and a writer per
direction) and one accepting; a link carries a handful of MQTT connections.

Timing of one direction (``Shaper``): every chunk read (up to 64 KiB) is cut
into segments of ``segment_bytes`` (1448, a typical MSS). Segment ``s`` of a
chunk that arrived at ``t``:

- rate: leaves the token bucket at ``depart`` (immediately while the bucket
  holds ``s`` bytes of tokens, else when it will), then takes ``s / rate`` to
  serialise: ``sent = depart + s / rate``;
- delay: ``release = sent + max(0, delay + jitter)``, one jitter sample per chunk;
- loss: with probability ``loss`` the segment is held another RTO;
- order: ``release = max(release, previous release)``: bytes are never
  reordered, so a held segment holds everything behind it (head-of-line
  blocking, as in TCP).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from agents.errors import UserError

log = logging.getLogger(__name__)

SEGMENT_BYTES = 1448
"""Segment size for rate and loss accounting: a 1500-byte Ethernet MTU less IP and TCP headers with timestamps."""
CHUNK_BYTES = 65536
"""Largest read from a socket; it is cut into segments."""
RTO_MIN_MS = 200.0
"""Linux's minimum retransmission timeout (``TCP_RTO_MIN``)."""
QUEUE_LIMIT_S = 0.05
"""With a rate: the proxy stops reading a side while more than this much traffic waits for the token bucket, so
the sender's TCP window closes (back-pressure) instead of the proxy buffering without bound (like tbf's latency)."""
MAX_BUFFER_BYTES = 8 * 1024 * 1024
"""Bytes of one direction held in the delay line before the proxy stops reading that side."""
BURST_S = 0.001
"""Default bucket size, as time at the rate: 1 ms of traffic (but at least two segments)."""

WAKE_EARLY_S = 0.001
"""Waits longer than twice this end this much early and then wait the remainder: a short wait overshoots less."""

JitterDist = Literal["uniform", "normal"]


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) as ``(host, port)``; a ``UserError`` naming ``what`` if malformed."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not text.strip().startswith("[")):
        raise UserError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883 ([::1]:1883 for IPv6)")
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"{what} {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise UserError(f"{what} {text!r}: port {port} is outside 0-65535")
    return host, port


@dataclass(frozen=True)
class LinkShape:
    """What one emulated link does to each direction (both directions get the same shape, independently).

    ``delay_ms``: one-way propagation delay. ``jitter_ms``: spread of the delay,
    ``uniform`` (delay ± jitter) or ``normal`` (standard deviation jitter),
    total delay clipped at zero and never reordering bytes. ``loss``:
    probability per segment that it is held one extra RTO, as if TCP had
    retransmitted it. ``rate_mbit``: link rate in 10^6 bits/s, 0 for
    unlimited. ``seed``: makes jitter and loss reproducible. ``rto_ms``: the
    retransmission timeout (default: round trip + max(200 ms, 4 × jitter),
    Linux's estimate). ``burst_bytes``: token bucket size (default
    max(2 segments, 1 ms at the rate)). ``segment_bytes``: rate and loss
    accounting unit (an MSS).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float = 0.0
    seed: int | None = None
    jitter_dist: JitterDist = "uniform"
    rto_ms: float | None = None
    burst_bytes: int | None = None
    segment_bytes: int = SEGMENT_BYTES

    def __post_init__(self) -> None:
        for name, what, unit in (
            ("delay_ms", "delay", "ms"),
            ("jitter_ms", "jitter", "ms"),
            ("rate_mbit", "rate", "Mbit/s"),
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"link {what}: {value:g} {unit} must be a finite number >= 0")
        if not (math.isfinite(self.loss) and 0 <= self.loss < 1):
            raise UserError(f"link loss: {self.loss:g} must be a probability in [0, 1), e.g. 0.01 for 1%")
        if self.jitter_dist not in ("uniform", "normal"):
            raise UserError(f"link jitter distribution {self.jitter_dist!r}: expected 'uniform' or 'normal'")
        if self.rto_ms is not None and not (math.isfinite(self.rto_ms) and self.rto_ms > 0):
            raise UserError(f"link rto: {self.rto_ms} ms must be a finite number > 0")
        if not 1 <= self.segment_bytes <= CHUNK_BYTES:
            raise UserError(f"link segment size {self.segment_bytes} must be within 1-{CHUNK_BYTES} bytes")
        if self.burst_bytes is not None and self.burst_bytes < self.segment_bytes:
            raise UserError(f"link burst {self.burst_bytes} B must hold at least one segment ({self.segment_bytes} B)")

    @property
    def rate_bytes_per_s(self) -> float:
        """The rate in bytes per second; 0 for unlimited."""
        return self.rate_mbit * 1e6 / 8

    @property
    def burst(self) -> int:
        """Token bucket size in bytes (only meaningful with a rate)."""
        if self.burst_bytes is not None:
            return self.burst_bytes
        return max(2 * self.segment_bytes, int(self.rate_bytes_per_s * BURST_S))

    @property
    def rto_s(self) -> float:
        """Extra hold of a 'lost' segment, seconds: ``rto_ms``, else 2 × delay + max(200 ms, 4 × jitter)."""
        if self.rto_ms is not None:
            return self.rto_ms / 1e3
        return (2 * self.delay_ms + max(RTO_MIN_MS, 4 * self.jitter_ms)) / 1e3

    def describe(self) -> str:
        """One line for logs: every setting that shapes traffic."""
        parts = [f"delay {self.delay_ms:g} ms"]
        if self.jitter_ms:
            parts.append(f"jitter {self.jitter_ms:g} ms {self.jitter_dist}")
        if self.loss:
            parts.append(f"loss {self.loss * 100:g}% (held {self.rto_s * 1e3:g} ms)")
        if self.rate_mbit:
            parts.append(f"rate {self.rate_mbit:g} Mbit/s (burst {self.burst} B)")
        else:
            parts.append("rate unlimited")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return ", ".join(parts)


class Segment(NamedTuple):
    """Bytes ``[previous end, end)`` of a chunk, to be written at ``release`` (time.monotonic seconds)."""

    end: int
    release: float
    held: bool


class Shaper:
    """Release times for one direction of one connection: token bucket, delay line, loss as an RTO hold."""

    def __init__(self, shape: LinkShape, rng: random.Random) -> None:
        self.shape = shape
        self.rng = rng
        self._rate = shape.rate_bytes_per_s
        self._burst = shape.burst
        self._delay = shape.delay_ms / 1e3
        self._jitter = shape.jitter_ms / 1e3
        self._rto = shape.rto_s
        self.full_at = 0.0
        """Token bucket: the time at which it will be full again (everything sent so far paid for)."""
        self.last_release = 0.0

    def _delay_sample(self) -> float:
        if not self._jitter:
            return self._delay
        if self.shape.jitter_dist == "normal":
            spread = self.rng.gauss(0.0, self._jitter)
        else:
            spread = self.rng.uniform(-self._jitter, self._jitter)
        return max(0.0, self._delay + spread)

    def ready_at(self) -> float:
        """When the bucket will next hold a full segment's tokens (the backlog waiting for it ends)."""
        if not self._rate:
            return 0.0
        return self.full_at - (self._burst - self.shape.segment_bytes) / self._rate

    def schedule(self, size: int, now: float) -> list[Segment]:
        """Segments of a ``size``-byte chunk read at ``now``, consecutive ones with equal release times merged."""
        out: list[Segment] = []
        delay = self._delay_sample()
        seg = self.shape.segment_bytes
        for start in range(0, size, seg):
            n = min(seg, size - start)
            if self._rate:
                depart = max(now, self.full_at - (self._burst - n) / self._rate)
                self.full_at = max(self.full_at, depart) + n / self._rate
                release = depart + n / self._rate + delay
            else:
                release = now + delay
            held = bool(self.shape.loss) and self.rng.random() < self.shape.loss
            if held:
                release += self._rto
            release = max(release, self.last_release)
            self.last_release = release
            if out and not held and not out[-1].held and out[-1].release == release:
                out[-1] = Segment(start + n, release, False)
            else:
                out.append(Segment(start + n, release, held))
        return out

    def schedule_eof(self, now: float) -> float:
        """Release time of the end of the stream (the FIN crosses the link too, after every byte)."""
        self.last_release = max(now + self._delay, self.last_release)
        return self.last_release


@dataclass(frozen=True)
class LinkStats:
    """Counters of a proxy since it started; ``up`` is client → upstream, ``down`` upstream → client."""

    connections: int = 0
    open_connections: int = 0
    failed_connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    held_up: int = 0
    held_down: int = 0

    def line(self) -> str:
        """The counters on one line."""
        return (
            f"connections {self.connections} ({self.open_connections} open, {self.failed_connections} failed), "
            f"bytes up {self.bytes_up} down {self.bytes_down}, "
            f"segments held for loss up {self.held_up} down {self.held_down}"
        )


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Pipe:
    """One direction of one connection: a reader thread schedules chunks, a writer thread releases them on time."""

    def __init__(self, conn: _Connection, up: bool, src: socket.socket, dst: socket.socket, shaper: Shaper) -> None:
        self.conn = conn
        self.up = up
        self.src = src
        self.dst = dst
        self.shaper = shaper
        self.items: deque[tuple[float, bytes | None]] = deque()
        self.cond = threading.Condition()
        self.buffered = 0
        self.closed = False

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _wait(self, until: Callable[[], bool], deadline: float | None = None) -> None:
        """Under ``cond``: wait until ``until()`` or closed (or past ``deadline``)."""
        while not self.closed and not until():
            if deadline is None:
                self.cond.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Long sleeps wake later (~0.3 ms at 50 ms here, ~0.1 ms at 1 ms): sleep to just short, then the rest.
            self.cond.wait(remaining - WAKE_EARLY_S if remaining > 2 * WAKE_EARLY_S else remaining)

    def read_loop(self) -> None:
        proxy = self.conn.proxy
        failed = False
        try:
            while True:
                with self.cond:
                    self._wait(lambda: self.buffered < MAX_BUFFER_BYTES)
                    backlog_ends = self.shaper.ready_at() - QUEUE_LIMIT_S
                    if backlog_ends > time.monotonic():
                        self._wait(lambda: False, backlog_ends)
                    if self.closed:
                        return
                data = self.src.recv(CHUNK_BYTES)
                now = time.monotonic()
                if not data:
                    break
                segments = self.shaper.schedule(len(data), now)
                held = sum(s.held for s in segments)
                with self.cond:
                    start = 0
                    for s in segments:
                        self.items.append((s.release, data[start : s.end]))
                        start = s.end
                    self.buffered += len(data)
                    self.cond.notify_all()
                if held:
                    proxy._count(self.up, 0, held)
        except OSError as exc:
            failed = True
            log.debug("connection %d %s: read: %s", self.conn.index, self._name(), exc)
        finally:
            if failed:
                self.conn.abort()
            else:
                with self.cond:
                    self.items.append((self.shaper.schedule_eof(time.monotonic()), None))
                    self.cond.notify_all()
            self.conn.thread_done()

    def write_loop(self) -> None:
        proxy = self.conn.proxy
        try:
            while True:
                with self.cond:
                    self._wait(lambda: bool(self.items))
                    if self.closed:
                        return
                    self._wait(lambda: False, self.items[0][0])
                    if self.closed:
                        return
                    now = time.monotonic()
                    batch: list[bytes] = []
                    eof = False
                    while self.items and self.items[0][0] <= now:
                        _, data = self.items.popleft()
                        if data is None:
                            eof = True
                            break
                        batch.append(data)
                if batch:
                    payload = b"".join(batch)
                    self.dst.sendall(payload)
                    with self.cond:
                        self.buffered -= len(payload)
                        self.cond.notify_all()
                    proxy._count(self.up, len(payload), 0)
                if eof:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
        except OSError as exc:
            log.debug("connection %d %s: write: %s", self.conn.index, self._name(), exc)
            self.conn.abort()
        finally:
            self.conn.thread_done()

    def _name(self) -> str:
        return "up" if self.up else "down"


class _Connection:
    """A client connection and its upstream connection, shaped both ways."""

    def __init__(self, proxy: LinkProxy, index: int, client: socket.socket) -> None:
        self.proxy = proxy
        self.index = index
        self.client = client
        self.upstream: socket.socket | None = None
        self.pipes: list[_Pipe] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running = 0
        self._aborted = False

    def _rng(self, direction: str) -> random.Random:
        seed = self.proxy.shape.seed
        return random.Random() if seed is None else random.Random(f"{seed}:{self.index}:{direction}")

    def open(self) -> None:
        """Connect upstream, then start both directions (runs on its own thread: a connect may take a while)."""
        try:
            upstream = socket.create_connection(self.proxy.upstream, timeout=self.proxy.connect_timeout)
        except OSError as exc:
            log.warning("connection %d: upstream %s unreachable: %s", self.index, self.proxy.upstream_text, exc)
            self.proxy._forget(self, failed=True)  # counted before the client can see the close
            with contextlib.suppress(OSError):
                self.client.close()
            return
        upstream.settimeout(None)
        _nodelay(upstream)
        with self._lock:
            self.upstream = upstream
        shape = self.proxy.shape
        self.pipes = [
            _Pipe(self, True, self.client, upstream, Shaper(shape, self._rng("up"))),
            _Pipe(self, False, upstream, self.client, Shaper(shape, self._rng("down"))),
        ]
        with self._lock:
            if self._aborted:  # the proxy stopped while we were connecting
                self._close_sockets()
                self.proxy._forget(self)
                return
            for pipe in self.pipes:
                for target, role in ((pipe.read_loop, "read"), (pipe.write_loop, "write")):
                    name = f"link-{self.index}-{pipe._name()}-{role}"
                    self.threads.append(threading.Thread(target=target, name=name, daemon=True))
            self._running = len(self.threads)
        for t in self.threads:
            t.start()

    def abort(self) -> None:
        """Tear both sides down now (a reset, an error, or the proxy stopping)."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            for sock in (self.client, self.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        for pipe in self.pipes:
            pipe.close()

    def thread_done(self) -> None:
        """Called by each of the four threads as it ends; the last closes the sockets."""
        with self._lock:
            self._running -= 1
            last = self._running == 0
            if last:
                self._close_sockets()
        if last:
            self.proxy._forget(self)

    def _close_sockets(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class LinkProxy:
    """A shaped TCP proxy: listens on ``listen``, forwards each connection to ``upstream`` through ``shape``.

    ``start()`` binds (port 0: any free port, read it from ``port``) and
    accepts on a background thread; ``stop()`` closes everything. Usable as a
    context manager. ``stats()`` returns the counters.
    """

    def __init__(
        self,
        upstream: str | tuple[str, int],
        shape: LinkShape | None = None,
        listen: str | tuple[str, int] = ("127.0.0.1", 0),
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream = parse_hostport(upstream, "upstream") if isinstance(upstream, str) else upstream
        self.listen = parse_hostport(listen, "listen address") if isinstance(listen, str) else listen
        self.shape = shape or LinkShape()
        self.connect_timeout = connect_timeout
        self.host = self.listen[0]
        self.port = self.listen[1]
        self._server: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._accepting: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._count_lock = threading.Lock()
        self._counters = {"connections": 0, "failed": 0, "up": 0, "down": 0, "held_up": 0, "held_down": 0}

    @property
    def upstream_text(self) -> str:
        """The upstream as HOST:PORT."""
        return _join(*self.upstream)

    @property
    def address(self) -> str:
        """The bound listen address as HOST:PORT (after ``start``)."""
        return _join(self.host, self.port)

    def start(self) -> LinkProxy:
        """Bind and listen, then accept on a background thread; a ``UserError`` if the address cannot be bound."""
        host, port = self.listen
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family = infos[0][0]
            self._server = socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            raise UserError(f"cannot listen on {_join(host, port)}: {exc.strerror or exc}") from None
        self.port = int(self._server.getsockname()[1])
        self._server.setblocking(False)
        self._accepting = threading.Thread(target=self._accept_loop, name="link-accept", daemon=True)
        self._accepting.start()
        log.debug("link %s -> %s: %s", self.address, self.upstream_text, self.shape.describe())
        return self

    def _accept_loop(self) -> None:
        assert self._server is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._server, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stopping:
                        return
                    try:
                        client, _peer = self._server.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        log.warning("accept: %s", exc)
                        continue
                    client.setblocking(True)
                    _nodelay(client)
                    with self._count_lock:
                        self._counters["connections"] += 1
                        index = self._counters["connections"]
                    conn = _Connection(self, index, client)
                    with self._lock:
                        self._connections.add(conn)
                    threading.Thread(target=conn.open, name=f"link-{index}-open", daemon=True).start()

    def _forget(self, conn: _Connection, failed: bool = False) -> None:
        with self._lock:
            self._connections.discard(conn)
        if failed:
            with self._count_lock:
                self._counters["failed"] += 1

    def _count(self, up: bool, nbytes: int, held: int) -> None:
        with self._count_lock:
            self._counters["up" if up else "down"] += nbytes
            self._counters["held_up" if up else "held_down"] += held

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        with self._lock:
            open_now = len(self._connections)
        with self._count_lock:
            c = dict(self._counters)
        return LinkStats(
            connections=c["connections"],
            open_connections=open_now,
            failed_connections=c["failed"],
            bytes_up=c["up"],
            bytes_down=c["down"],
            held_up=c["held_up"],
            held_down=c["held_down"],
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, reset every open connection and wait (up to ``timeout`` s) for their threads."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._accepting is not None:
            self._accepting.join(timeout)
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.abort()
        deadline = time.monotonic() + timeout
        for conn in conns:
            for t in conn.threads:
                t.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._server, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> LinkProxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
