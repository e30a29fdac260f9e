"""Chunking: a message above the configured size travels as numbered chunk envelopes and is reassembled.

Each chunk is an ordinary envelope (``kind: chunk``) carrying a slice of the whole
message's wire bytes, with ``seq``, ``total``, the whole ``size`` and its CRC-32.
The receiver keeps partial sets by message id; a set is passed on only when every
chunk is there and the CRC matches. A set still incomplete after the timeout is
dropped and counted, never passed on. Sizes are checked against the receiver's
limit before anything is buffered, and the number of partial sets is bounded.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from dataclasses import dataclass, field

from agents.transport.envelope import Envelope, MessageError, Payload, encode


def split_message(wire: bytes, message_id: str, chunk_bytes: int) -> list[bytes]:
    """``wire`` itself when it fits in ``chunk_bytes``, else chunk envelopes that :class:`Reassembler` joins."""
    if len(wire) <= chunk_bytes:
        return [wire]
    total = math.ceil(len(wire) / chunk_bytes)
    crc = zlib.crc32(wire)
    view = memoryview(wire)
    return [
        encode(
            Envelope(
                {"id": message_id, "kind": "chunk", "seq": i, "total": total, "size": len(wire), "crc32": crc},
                bytes(view[i * chunk_bytes : (i + 1) * chunk_bytes]),
            )
        )
        for i in range(total)
    ]


@dataclass
class _Partial:
    total: int
    size: int
    crc: int
    started: float
    parts: dict[int, Payload] = field(default_factory=dict)
    received: int = 0


class Reassembler:
    """Joins chunk sets; thread-safe."""

    def __init__(self, max_bytes: int, timeout_s: float, max_sets: int = 64) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_sets = max_sets
        self._sets: dict[str, _Partial] = {}
        self._lock = threading.Lock()
        self.dropped = 0  # incomplete sets given up (timeout or no room)

    def add(self, chunk: Envelope) -> bytes | None:
        """Take one chunk; the whole message's wire bytes once its last chunk arrives, else None."""
        with self._lock:
            return self._add(chunk)

    def _add(self, chunk: Envelope) -> bytes | None:
        self._expire()
        h = chunk.header
        seq, total, size, crc = h.get("seq"), h.get("total"), h.get("size"), h.get("crc32")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seq, total, size, crc)):
            raise MessageError("chunk", "chunk header needs integer seq, total, size and crc32")
        assert isinstance(seq, int) and isinstance(total, int) and isinstance(size, int) and isinstance(crc, int)
        if size > self.max_bytes:
            raise MessageError("oversized", f"chunked message of {size} bytes exceeds the limit of {self.max_bytes}")
        if not 0 <= seq < total or total < 2 or total > size:
            raise MessageError("chunk", f"chunk {seq} of {total} for a {size}-byte message is impossible")
        partial = self._sets.get(chunk.id)
        if partial is None:
            if len(self._sets) >= self.max_sets:
                oldest = min(self._sets, key=lambda k: self._sets[k].started)
                del self._sets[oldest]
                self.dropped += 1
            partial = self._sets[chunk.id] = _Partial(total, size, crc, time.monotonic())
        elif (partial.total, partial.size, partial.crc) != (total, size, crc):
            raise MessageError("chunk", f"chunk {seq} of {chunk.id} disagrees with the chunks before it")
        if seq in partial.parts:
            return None  # a redelivery (QoS 1)
        if partial.received + len(chunk.payload) > size:
            del self._sets[chunk.id]
            raise MessageError("chunk", f"chunks of {chunk.id} add up to more than the announced {size} bytes")
        partial.parts[seq] = chunk.payload
        partial.received += len(chunk.payload)
        if len(partial.parts) < total:
            return None
        del self._sets[chunk.id]
        whole = b"".join(partial.parts[i] for i in range(total))
        if len(whole) != size or zlib.crc32(whole) != crc:
            raise MessageError("chunk", f"reassembled {chunk.id} fails its size or CRC check")
        return whole

    def expire(self) -> int:
        """Drop sets older than the timeout; how many were dropped now."""
        with self._lock:
            return self._expire()

    def _expire(self) -> int:
        now = time.monotonic()
        stale = [k for k, p in self._sets.items() if now - p.started > self.timeout_s]
        for k in stale:
            del self._sets[k]
        self.dropped += len(stale)
        return len(stale)

    @property
    def pending(self) -> int:
        """Sets waiting for chunks."""
        return len(self._sets)
