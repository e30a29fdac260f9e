"""Ship line protocol to InfluxDB off the hot path, in batches, and lose nothing while it is away.

Lines are handed over with :meth:`InfluxSink.submit` (never blocks, never raises).
A background thread packs them into batches, gzips them and POSTs them to the v1
``/write`` endpoint (InfluxDB 1.x; 2.x through a DBRP mapping; 3.x) with explicit
nanosecond precision. On 429, 5xx or a connection error a batch goes to the spool
directory on disk and the sink retries with exponential backoff (honouring
``Retry-After``); spooled batches are sent first and in order once the database
answers again, and survive a restart of the agent. The spool is bounded: past
``spool_max_bytes`` the oldest batches are dropped and their points counted. A batch
the server refuses as malformed (400) is counted and logged, not retried forever.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.config import InfluxConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InfluxTarget:
    """Where points go: a v1 write URL and its credentials (from the environment, never from YAML)."""

    url: str
    database: str  # the bucket for the v2 API
    api: str = "v1"
    org: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    retention_policy: str | None = None
    timeout_s: float = 5.0

    def write_url(self) -> str:
        """The ``/write`` URL with database, precision and retention policy."""
        query = {"db": self.database, "precision": "ns"}
        if self.retention_policy:
            query["rp"] = self.retention_policy
        return f"{self.url.rstrip('/')}/write?{urllib.parse.urlencode(query)}"

    def headers(self) -> dict[str, str]:
        """Content headers plus authentication (basic for 1.x, token for 2.x/3.x compatibility)."""
        h = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
        if self.token:
            h["Authorization"] = f"Token {self.token}"
        elif self.username:
            cred = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            h["Authorization"] = f"Basic {cred}"
        return h


def influx_query(target: InfluxTarget, q: str, database: str | None = None) -> Any:
    """Run an InfluxQL statement through the v1 ``/query`` endpoint; the JSON answer (errors raise)."""
    params = {"q": q, **({"db": database} if database else {})}
    headers = {k: v for k, v in target.headers().items() if k == "Authorization"}
    url = f"{target.url.rstrip('/')}/query?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=max(10.0, target.timeout_s)) as resp:
        answer = json.loads(resp.read())
    errors = [r["error"] for r in answer.get("results", []) if "error" in r]
    if errors:
        raise ValueError(f"InfluxDB refused {q!r}: {'; '.join(errors)}")
    return answer


def create_database(target: InfluxTarget) -> None:
    """``CREATE DATABASE`` (a no-op when it exists); needs a user allowed to create databases."""
    influx_query(target, f'CREATE DATABASE "{target.database}"')


class _Retryable(Exception):
    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class InfluxSink:
    """Batches lines and writes them to InfluxDB on its own thread; spools to disk while it cannot."""

    def __init__(
        self,
        target: InfluxTarget,
        spool_dir: Path,
        batch_lines: int = 5000,
        flush_s: float = 1.0,
        spool_max_bytes: int = 256 * 1024 * 1024,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.target = target
        self.spool_dir = spool_dir
        self.batch_lines = batch_lines
        self.flush_s = flush_s
        self.spool_max_bytes = spool_max_bytes
        self.max_backoff_s = max_backoff_s
        spool_dir.mkdir(parents=True, exist_ok=True)
        self._pending: deque[str] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self.written = 0  # points the server accepted
        self.spooled = 0  # points that went to disk at least once
        self.dropped = 0  # points lost: spool cap hit, refused by the server as malformed, or a damaged spool file
        self.errors = 0  # failed write attempts
        self._recover_unfinished()
        self._seq = max((int(p.name.split("-")[0]) for p in self._spooled()), default=0)
        self._backoff = 0.0
        self._next_try = 0.0
        self._v2: _V2Writer | None = None
        self._thread = threading.Thread(target=self._run, name="influx-sink", daemon=True)
        self._thread.start()

    # --- any thread ------------------------------------------------------------------------
    def submit(self, lines: list[str]) -> None:
        """Queue lines for writing (returns at once)."""
        if not lines:
            return
        with self._cond:
            if not self._closed:
                self._pending.extend(lines)
                if len(self._pending) >= self.batch_lines:
                    self._cond.notify()
                return
        self._spool(list(lines))  # after close() nothing sends: straight to disk, for the next start

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout_s``); what cannot be sent stays in the spool on disk."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s + 1.0)
        with self._cond:  # not sent in time: keep it for the next start
            self._closed = True
            if self._pending:
                self._spool(list(self._pending))
                self._pending.clear()

    def status(self) -> dict[str, int]:
        """Counters for the agent's health report."""
        return {
            "influx_written": self.written,
            "influx_spooled": self.spooled,
            "influx_backlog": self.backlog,
            "influx_dropped": self.dropped,
            "influx_errors": self.errors,
        }

    @property
    def backlog(self) -> int:
        """Batches waiting in the spool."""
        return len(self._spooled())

    # --- sink thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing and len(self._pending) < self.batch_lines:
                    self._cond.wait(self.flush_s)
                closing = self._closing
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.batch_lines))]
            try:
                # Spooled batches are older: while any wait, new ones queue behind them on disk.
                if batch and (self._spooled() or not self._ready() or not self._post(_pack(batch), len(batch))):
                    self._spool(batch)
                self._drain_spool()
            except Exception as exc:  # nothing could be written once this thread ended: never let it end
                self.errors += 1
                self._next_try = time.monotonic() + max(1.0, self._backoff)
                log.exception("influx sink: unexpected %s; the batch goes to the spool", type(exc).__name__)
                if batch:  # written already, at worst: InfluxDB keeps one point per series and timestamp
                    self._spool(batch)
            if closing:
                with self._cond:
                    empty = not self._pending
                if empty and (not self._spooled() or not self._ready()):
                    return  # done, or the database is away: the spool keeps the rest for the next start

    def _ready(self) -> bool:
        return time.monotonic() >= self._next_try

    def _drain_spool(self) -> None:
        for path in self._spooled():
            if not self._ready():
                return
            try:
                body = path.read_bytes()
            except OSError as exc:
                log.error("influx spool %s unreadable (%s); skipped", path, exc)
                continue
            if not self._post(body, _points(path)):
                return
            path.unlink(missing_ok=True)

    def _post(self, body: bytes, points: int) -> bool:
        """True when the batch is done with (written, or refused as malformed); False to keep and retry."""
        try:
            self._request(body)
        except _Retryable as exc:
            self.errors += 1
            self._backoff = min(self.max_backoff_s, max(0.5, self._backoff * 2))
            wait = exc.retry_after if exc.retry_after is not None else self._backoff
            self._next_try = time.monotonic() + wait
            if self.errors == 1 or self.errors % 20 == 0:
                log.warning("influx at %s: %s; spooling, retry in %.1f s", self.target.url, exc, wait)
            return False
        except ValueError as exc:  # the server refused the points themselves: retrying cannot help
            refused = refused_points(str(exc), points)
            self.dropped += refused
            self.written += points - refused
            log.error("influx refused %d of a batch of %d points: %s", refused, points, _shorten(str(exc)))
            return True
        self._backoff = 0.0
        self._next_try = 0.0
        self.written += points
        return True

    def _request(self, body: bytes) -> None:
        if self.target.api == "v2":
            if self._v2 is None:
                self._v2 = _V2Writer(self.target)
            self._v2.write(body)
            return
        req = urllib.request.Request(self.target.write_url(), data=body, headers=self.target.headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.target.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            retry = exc.headers.get("Retry-After")
            # The whole answer: a partial write's counts come at its end, after the refused lines.
            _refused(exc.code, exc.read().decode(errors="replace"), retry)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"unreachable ({getattr(exc, 'reason', exc)})") from None

    def _recover_unfinished(self) -> None:
        """Spool files a crash left unnamed (``.lp.tmp``): kept when whole, else counted as dropped."""
        for tmp in sorted(self.spool_dir.glob("*.lp.tmp")):
            try:
                gzip.decompress(tmp.read_bytes())
                tmp.replace(tmp.with_suffix(".gz"))
            except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                self.dropped += _points(tmp)
                tmp.unlink(missing_ok=True)
                log.error("influx spool %s damaged (%s): %d points dropped", tmp.name, exc, _points(tmp))

    def _spooled(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.lp.gz"), key=lambda p: p.name)

    def _spool(self, lines: list[str]) -> None:
        with self._cond:  # close() may spool from another thread
            self._seq += 1
            path = self.spool_dir / f"{self._seq:012d}-{len(lines)}.lp.gz"
        try:
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                f.write(_pack(lines))
                f.flush()
                os.fsync(f.fileno())  # on disk before it has its name: a power cut leaves no empty batch
            tmp.replace(path)
        except OSError as exc:
            self.dropped += len(lines)
            log.error("influx spool %s: cannot write (%s); %d points lost", self.spool_dir, exc, len(lines))
            return
        self.spooled += len(lines)
        files = self._spooled()
        total = sum(p.stat().st_size for p in files)
        while total > self.spool_max_bytes and len(files) > 1:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            self.dropped += _points(oldest)
            oldest.unlink(missing_ok=True)
            log.error("influx spool over %d bytes: dropped its oldest batch %s", self.spool_max_bytes, oldest.name)


def refused_points(answer: str, points: int) -> int:
    """How many of a batch of ``points`` a 400 answer says were refused.

    InfluxDB 1.x writes the rest of a batch with bad lines and answers ``partial write:`` with one
    ``unable to parse`` per line it could not parse, then ``dropped=N`` for the parsed points it would
    not keep (a field's type changed, outside the retention policy); the lines it could not parse are
    not in N. Any other 400 refuses the whole batch.
    """
    if "partial write" not in answer:
        return points
    dropped = re.search(r"dropped=(\d+)", answer)
    return min(points, answer.count("unable to parse") + (int(dropped.group(1)) if dropped else 0))


def _shorten(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters for a log line (a refused batch quotes its lines)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _refused(code: int, detail: str, retry_after: str | None) -> None:
    """Raise what an HTTP error status means for the batch: retry later (kept), or refused for good."""
    if code == 429 or code >= 500:
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise _Retryable(f"HTTP {code} {_shorten(detail)}", wait)
    if code in (401, 403, 404):  # credentials, database or bucket: a person must act; keep the data
        raise _Retryable(f"HTTP {code} {_shorten(detail)} (check credentials and the database/bucket)")
    raise ValueError(f"HTTP {code} {detail}")


class _V2Writer:
    """InfluxDB 2.x native: ``/api/v2/write`` with a token, through ``influxdb-client``.

    Synchronous and without retries of its own: the sink's backoff and spool handle failures, as for v1.
    """

    def __init__(self, target: InfluxTarget) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # only v2 deployments import it
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.target = target
        self.client = InfluxDBClient(
            url=target.url,
            token=target.token or "",
            org=target.org or "",
            enable_gzip=True,
            timeout=int(target.timeout_s * 1000),
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        """Write one gzipped batch (as spooled); raises like the v1 path."""
        import urllib3
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.api.write(
                bucket=self.target.database,
                org=self.target.org or "",
                record=gzip.decompress(body),
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # the library types NS as str
            )
        except ApiException as exc:
            headers: dict[str, str] = dict(exc.headers or {})
            _refused(int(exc.status or 0), str(exc.body or exc.reason), headers.get("Retry-After"))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(f"unreachable ({exc})") from None


def _pack(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=5)


def _points(path: Path) -> int:
    """Points in a spool file, from its name (``<seq>-<points>.lp.gz``)."""
    try:
        return int(path.name.split(".")[0].split("-")[1])
    except (IndexError, ValueError):
        return 0


def influx_target(cfg: InfluxConfig) -> InfluxTarget:
    """Where a deployment's ``telemetry.influx`` section points, credentials from the environment."""
    return InfluxTarget(
        url=cfg.url,
        database=cfg.database or cfg.bucket or "",
        api=cfg.api,
        org=cfg.org,
        username=cfg.secret(cfg.username_env),
        password=cfg.secret(cfg.password_env),
        token=cfg.secret(cfg.token_env),
        retention_policy=cfg.retention_policy,
        timeout_s=cfg.timeout_s,
    )


def influx_sink(cfg: InfluxConfig, spool_dir: Path) -> InfluxSink:
    """The sink a deployment's ``telemetry.influx`` section describes."""
    return InfluxSink(influx_target(cfg), spool_dir, cfg.batch_lines, cfg.flush_s, cfg.spool_max_bytes)
