"""The device agent: early exits locally, offload the rest, exactly one answer per frame.

The worker thread runs the model's exits in order and answers at the first whose
calibrated confidence reaches its threshold; otherwise it sends the frame to its
tier and keeps going (up to ``window`` requests in flight). Each request has a
deadline: when it passes, the device answers with its final local prediction and
records a timeout; a reply that comes later is counted but changes nothing.
Duplicates (QoS 1 redelivery) are recognised by request id.
"""

from __future__ import annotations

import gc
import heapq
import json
import logging
import math
import queue
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from agents.config import DeploymentConfig
from agents.errors import UserError
from agents.models.inputs import to_input
from agents.models.stats import model_stats
from agents.records import FrameRecord, RecordWriter
from agents.runtime import Agent, CalibratedModel, exit_thresholds
from agents.sources.base import Frame, open_source, paced
from agents.transport.activations import encode_activation, warm_up
from agents.transport.codecs import activation_bytes
from agents.transport.envelope import Envelope, MessageError, Payload, encode
from agents.transport.images import decode_frame, encode_image

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A frame whose answer is awaited from another tier."""

    record: FrameRecord
    deadline: float  # monotonic seconds
    activation: torch.Tensor | None = None  # split frames: what the device finishes itself if no answer comes


class DeviceAgent(Agent):
    """One device: a local model with early exits and an offload path."""

    def __init__(
        self, cfg: DeploymentConfig, device_id: str, frames: int | None = None, clock_skew_ms: float = 0.0
    ) -> None:
        self.dcfg = cfg.device(device_id)
        if self.dcfg.threads:
            torch.set_num_threads(self.dcfg.threads)
        super().__init__(cfg, device_id, "device", self._on_message, clock_skew_ms, via=self.dcfg.via)
        self._skew_ns = round(clock_skew_ms * 1e6)
        self.net = CalibratedModel(self.dcfg.model)
        self.thresholds = exit_thresholds(
            self.dcfg.threshold, self.net.model.num_exits, f"device {device_id}.threshold"
        )
        self.hw = (self.net.model.input_shape[1], self.net.model.input_shape[2])
        self.split = self.dcfg.split
        self._attach_frame = False
        if self.split is not None:
            n = self.net.model.num_stages
            if not 1 <= self.split < n:
                raise UserError(f"devices.{device_id}.split: {self.split} is not within 1..{n - 1} for {self.net.name}")
            warm_up(self.dcfg.codec)  # compile the encoder now, not on the first offloaded frame
            resume = cfg.tiers[self.dcfg.offload_to].split_models[self.dcfg.model]
            self._attach_frame = resume.forward == "frame"
            # Fail at start, not frame by frame at the receiver: every tier shares this broker section.
            size = activation_bytes(model_stats(self.net.model).split_shapes[self.split], self.dcfg.codec)
            if size > cfg.broker.max_payload_bytes:
                raise UserError(
                    f"devices.{device_id}: the activation of {self.net.name} at split {self.split} is {size} bytes "
                    f"with codec {self.dcfg.codec}, above broker.max_payload_bytes ({cfg.broker.max_payload_bytes}); "
                    "raise max_payload_bytes (chunking carries it) or choose a smaller codec or a later split"
                )
        self._temps = [float(t) for t in self.net.temperatures]
        self.frames_limit = frames
        self.results: queue.Queue[Envelope] = queue.Queue()
        self.sensor_frames: queue.Queue[Frame | None] = queue.Queue(maxsize=256)
        self.pending: dict[str, Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._finished: OrderedDict[str, str] = OrderedDict()  # id -> outcome, for duplicates and late replies
        self.writer = RecordWriter(cfg.run_dir / device_id, sink=self.telemetry.sink)
        self.reply_topic = self.topics.results(device_id)
        self.prefix = f"{device_id}-{uuid.uuid4().hex[:6]}"
        self._frames_seen = 0
        # Answers by outcome, counted on the worker thread alone (no lock on the per-frame path);
        # frames/s from (time, answers) samples taken at each health report.
        self._answered = {"local": 0, "remote": 0, "timeout": 0}
        self._fps_samples: deque[tuple[float, int]] = deque()
        self.counters.update(
            dict.fromkeys(
                ("offloaded", "late_replies", "duplicate_replies", "dropped_sensor_frames", "chunked_messages"), 0
            )
        )
        self._deadline_ns = int(self.dcfg.deadline_ms * 1e6)
        self._newest_capture = 0  # capture time of the newest frame answered: its age is the Age of Information

    # --- paho thread ----------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, _props: Any) -> None:
        now = self.now_ns()
        env = self.receive(topic, payload)
        if env is None:
            return
        env.stamp("device_receive", now)
        kind = env.header.get("kind")
        if topic == self.reply_topic and kind == "result":
            self.results.put(env)
        elif kind in ("frame", "end") and topic != self.reply_topic:
            self._sensor_message(env)
        else:
            self.reject("header", f"unexpected {kind!r} message on {topic}")

    def _sensor_message(self, env: Envelope) -> None:
        if env.header["kind"] == "end":
            self.sensor_frames.put(None)
            return
        try:
            image = decode_frame(env, self.hw)
        except MessageError as exc:
            self.reject(exc.kind, f"sensor frame {env.id}: {exc.detail}")
            return
        label, number = env.header.get("label"), env.header.get("frame", 0)
        if not isinstance(number, int) or isinstance(number, bool):
            self.reject("header", f"sensor frame {env.id}: 'frame' must be an integer, got {number!r}")
            return
        capture = dict(env.stamps).get("capture", self.now_ns())
        frame = Frame(number, image, label if isinstance(label, int) else None, capture)
        try:
            self.sensor_frames.put_nowait(frame)
        except queue.Full:
            self.count("dropped_sensor_frames")

    # --- frames -----------------------------------------------------------------------------
    def _frames(self) -> Iterator[Frame]:
        src = self.dcfg.source
        if src.kind != "sensor":
            stream = open_source(src, self.stop, self.net.meta["classes"])  # labels numbered as the model's classes
            frames = paced(stream, src, self.stop, self.frames_limit, wait=self._between_frames)
            if self._skew_ns:  # the local capture is on this agent's (skewed) clock, like its other stamps
                frames = (replace(f, capture_ns=f.capture_ns + self._skew_ns) for f in frames)
            yield from frames
            return
        n = 0
        while not self.stop.is_set() and (self.frames_limit is None or n < self.frames_limit):
            try:
                frame = self.sensor_frames.get(timeout=0.2)
            except queue.Empty:
                self._service(block=False)
                continue
            if frame is None:
                return
            n += 1
            yield frame

    def _infer(self, frame: Frame) -> None:
        rid = f"{self.prefix}-{frame.index:08d}"
        record = FrameRecord(
            deployment=self.cfg.deployment,
            run=self.run_id,
            device=self.id,
            frame=frame.index,
            request_id=rid,
            label=frame.label,
            prediction=-1,
            confidence=0.0,
            tier="device",
            exit=-1,
            model=self.net.name,
            outcome="local",
            stamps={"capture": frame.capture_ns, "device_start": self.now_ns()},
        )
        # The worker loop runs inside torch.inference_mode (see run): entering it per frame costs 30 µs.
        x = to_input(frame.image[None])
        act, last_stage = x, -1  # the activation after the last stage run, for a split
        confident = False
        for i, stage, logits, out in self.net.model.iter_exits(x, end=self.split):
            act, last_stage = out, stage
            # Ten numbers: plain Python is cheaper here than numpy or more torch dispatches.
            z = logits[0].tolist()
            top = max(z)
            pred = z.index(top)
            conf = 1.0 / sum(math.exp((v - top) / self._temps[i]) for v in z)
            record.exit, record.prediction, record.confidence = i, pred, conf
            if conf >= self.thresholds[i]:
                confident = True
                break
        if confident:
            record.stamps["device_end"] = self.now_ns()
            self._finish(record, "local")
            return
        payload: Payload
        if self.split is None:
            header, payload = encode_image(frame.image, self.dcfg.encoding, self.dcfg.jpeg_quality)
        else:
            if last_stage < self.split - 1:  # stages after the last exit on the way
                act = self.net.model.run(act, start=last_stage + 1, end=self.split, exits=False).activation
            record.stamps["device_end"] = self.now_ns()
            try:
                header, payload = self._split_payload(act, frame)
            except ValueError as exc:  # int8 cannot carry NaN or infinity: answer here, count it, go on
                self.reject("payload", f"frame {rid} not offloaded, answered on the device: {exc}")
                self._finish_locally(Pending(record, 0.0, act), "local")
                return
            record.split = self.split
        record.stamps.setdefault("device_end", self.now_ns())
        deadline_ns = frame.capture_ns + self._deadline_ns
        env = Envelope(
            {
                "id": rid,
                "kind": "request",
                "device": self.id,
                "reply_to": self.reply_topic,
                "deadline_ns": deadline_ns,
                "frame": frame.index,
                "device_model": self.net.name,
                "device_exit": record.exit,
                **header,
            },
            payload,
            stamps=[("capture", frame.capture_ns)],
        )
        if frame.label is not None:
            env.header["label"] = frame.label
        record.stamps["publish"] = self.now_ns()
        env.stamp("publish", record.stamps["publish"])
        record.bytes_up = len(payload)
        if self.bandwidth is not None:
            record.uplink_mbit = self.bandwidth.latest_mbit_s
        deadline = time.monotonic() + max(0.0, (deadline_ns - self.now_ns()) / 1e9)
        self.pending[rid] = Pending(record, deadline, act if self.split is not None else None)
        heapq.heappush(self._deadlines, (deadline, rid))
        self.send(
            self.topics.requests(self.dcfg.offload_to),
            encode(env),
            rid,
            qos=1,
            expiry_s=max(1, int(self.dcfg.deadline_ms / 1000) + 1),
            response_topic=self.reply_topic,
        )
        self.count("offloaded")

    def _tier_chain(self) -> list[str]:
        """The tiers this device's requests can reach (its offload tier and onward): their clocks stamp its frames."""
        return self.cfg.tier_chain(self.dcfg.offload_to)

    def _split_payload(self, act: torch.Tensor, frame: Frame) -> tuple[dict[str, Any], Payload]:
        """Header fields and bytes of a split request: the activation, and the frame when the tier may need it."""
        header, payload = encode_activation(act, self.dcfg.codec)
        header.update(model=self.net.name, model_digest=self.net.digest, split=self.split)
        if self._attach_frame:
            encoding = "png" if self.dcfg.encoding == "raw" else self.dcfg.encoding  # raw has no room for its shape
            _, frame_bytes = encode_image(frame.image, encoding, self.dcfg.jpeg_quality)
            header.update(frame_encoding=encoding, frame_nbytes=len(frame_bytes))
            payload = b"".join((payload, frame_bytes))
        return header, payload

    def _finish_locally(self, pending: Pending, outcome: str = "timeout") -> None:
        """No answer by the deadline: the device's own best answer (for a split frame, its model run to the end)."""
        record = pending.record
        record.tier = "device"
        if pending.activation is not None and self.split is not None:
            model = self.net.model
            with torch.inference_mode():
                logits = model.heads[-1](model.run(pending.activation, start=self.split, exits=False).activation)
            probs = torch.softmax(logits[0] / self._temps[-1], dim=0)
            record.exit, record.prediction = model.num_exits - 1, int(probs.argmax())
            record.confidence = float(probs.max())
            record.model = self.net.name
        self._finish(record, outcome)

    def _finish(self, record: FrameRecord, outcome: str) -> None:
        record.outcome = outcome
        record.stamps["answer"] = self.now_ns()
        if record.stamps["capture"] > self._newest_capture:
            self._newest_capture = record.stamps["capture"]
        self.writer.write(record)
        if outcome != "local":  # only a frame that was sent out can draw a late or duplicate reply
            self._finished[record.request_id] = outcome
            if len(self._finished) > 100_000:
                self._finished.popitem(last=False)
        self._answered[outcome] += 1

    def _handle_result_guarded(self, env: Envelope) -> None:
        """:meth:`_handle_result`, with an error no check foresaw counted (``rejected_unexpected``), not raised."""
        try:
            self._handle_result(env)
        except Exception as exc:
            self._handler_failed(self.reply_topic, exc)

    def _handle_result(self, env: Envelope) -> None:
        rid = env.id
        received = env.stamps[-1][1] if env.stamps and env.stamps[-1][0] == "device_receive" else self.now_ns()
        pending = self.pending.pop(rid, None)
        if pending is not None and received > pending.record.stamps["capture"] + self._deadline_ns:
            # Arrived after its deadline while the device was busy: the deadline answer stands, as if on time.
            self._finish_locally(pending)
            pending = None
        if pending is None:
            if self._finished.get(rid) == "timeout":
                deadline_ns = dict(env.stamps).get("capture", 0) + self._deadline_ns
                prediction = env.header.get("prediction", -1)
                if not isinstance(prediction, int) or isinstance(prediction, bool):
                    self.reject("header", f"late result {rid}: 'prediction' must be an integer, got {prediction!r}")
                    return
                self.count("late_replies")
                self.writer.write_late(rid, str(env.header.get("tier")), prediction, (received - deadline_ns) / 1e6)
            elif rid in self._finished:
                self.count("duplicate_replies")
            else:
                self.reject("unknown_id", f"result for unknown request {rid}")
            return
        h = env.header
        r = pending.record
        try:
            r.tier, r.model, r.exit = str(h["tier"]), str(h["model"]), int(h["exit"])
            r.prediction, r.confidence = int(h["prediction"]), float(h["confidence"])
        except (KeyError, TypeError, ValueError) as exc:
            self.reject("header", f"result {rid} lacks a field ({exc})")
            self.pending[rid] = pending  # still waiting: a valid reply or the deadline will end it
            return
        for name, ns in env.stamps:
            r.stamps.setdefault(name, ns)
        if self.clock is not None and isinstance(agents := h.get("agents"), dict):
            for tier, agent in agents.items():
                offset = self.clock.offset_ns(str(agent))
                if offset is not None:
                    r.offsets_ns[str(tier)] = offset
        self._finish(r, "remote")

    def _between_frames(self, seconds: float) -> bool:
        """A paced source's wait for its next frame, spent on replies and deadlines as they come; True: stop."""
        until = time.monotonic() + seconds
        while not self.stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return False
            self._service(block=True, max_wait=left)
        return True

    def _service(self, block: bool, max_wait: float = 0.2) -> None:
        """Handle arrived results and passed deadlines; with ``block``, wait up to ``max_wait`` for either."""
        if not block and not self._deadlines and self.results.empty() and time.monotonic() < self._next_health:
            return  # the common case when everything is answered locally: nothing to do, cheaply
        timeout = 0.0
        if block:
            next_deadline = self._deadlines[0][0] - time.monotonic() if self._deadlines else max_wait
            timeout = max(0.0, min(max_wait, next_deadline))
        try:
            env = self.results.get(timeout=timeout) if block else self.results.get_nowait()
            self._handle_result_guarded(env)
            while True:
                self._handle_result_guarded(self.results.get_nowait())
        except queue.Empty:
            pass
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            pending = self.pending.pop(rid, None)
            if pending is not None:
                self._finish_locally(pending)
        self.maybe_publish_health()

    def health(self) -> dict[str, Any]:
        """Live status: frames, answers by outcome, in flight, frames/s over the last 5 s."""
        h = super().health()
        h["counters"].update({f"answered_{k}": v for k, v in self._answered.items()})
        now = time.monotonic()
        answered = sum(self._answered.values())
        self._fps_samples.append((now, answered))
        while len(self._fps_samples) > 1 and now - self._fps_samples[0][0] > 5.0:
            self._fps_samples.popleft()
        t0, n0 = self._fps_samples[0]
        h.update(
            frames=self._frames_seen,
            in_flight=len(self.pending),
            answered=answered,
            record_errors=self.writer.errors,
            fps=round((answered - n0) / (now - t0), 1) if now > t0 else 0.0,
        )
        if self._newest_capture:
            h["aoi_ms"] = round((self.now_ns() - self._newest_capture) / 1e6, 3)
        return h

    def run(self) -> int:
        """Process the source until it ends (or the stop event), wait for the answers in flight, exit 0."""
        self.link.subscribe(self.reply_topic, qos=1)
        if self.dcfg.source.kind == "sensor":  # before connecting, so no frame precedes the subscription
            self.link.subscribe(self.topics.frames(str(self.dcfg.source.sensor)), qos=1)
        self.link.start()
        self.record_run(
            model=self.net.name,
            model_digest=self.net.digest,
            thresholds=self.thresholds,
            split=self.split,
            codec=self.dcfg.codec if self.split is not None else None,
            offload_to=self.dcfg.offload_to,
            encoding=self.dcfg.encoding,
            deadline_ms=self.dcfg.deadline_ms,
            window=self.dcfg.window,
            source=self.dcfg.source.kind,
        )
        self.start_clock_sync(self._tier_chain())
        self.start_bandwidth_probe(self.dcfg.offload_to)
        if not self.link.wait_connected(10):
            log.warning(
                "device %s: broker %s:%d not reachable yet; offloaded frames will wait for it",
                self.id,
                self.cfg.broker.host,
                self.cfg.broker.port,
            )
        # Everything loaded so far (model, modules, config) lives for the whole run: keep the cyclic
        # collector from walking it on every young-generation pass of the per-frame loop.
        gc.collect()
        gc.freeze()
        try:
            with torch.inference_mode():
                for frame in self._frames():
                    self._frames_seen += 1
                    self._service(block=False)
                    while len(self.pending) >= self.dcfg.window and not self.stop.is_set():
                        self._service(block=True)
                    self._infer(frame)
            while self.pending and not self.stop.is_set():
                self._service(block=True)
        finally:  # also after an error: the records held so far are written, the link says "stopped"
            for rid in list(self.pending):  # stopped early: answer what is left locally
                self._finish_locally(self.pending.pop(rid))
            self.writer.close()
            self.maybe_publish_health(0)
            self.close_telemetry()  # what InfluxDB did not take in time stays in the spool for the next start
            done = json.dumps({**self.health(), "done": True}).encode()
            self.link.publish(self.topics.health(self.id), done, qos=1)
            self.link.close()
        log.info("device %s done: %d frames, %s", self.id, self._frames_seen, self.health()["counters"])
        return 0
