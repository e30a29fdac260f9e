"""``cascade replay``: publish a source as a simulated sensor on ``.../sensors/<id>/frames``."""

from __future__ import annotations

import logging
from typing import Any

from agents.config import DeploymentConfig
from agents.errors import UserError
from agents.models.checkpoint import read_metadata
from agents.runtime import Agent
from agents.sources.base import open_source, paced
from agents.transport.envelope import Envelope, encode
from agents.transport.images import encode_image

log = logging.getLogger(__name__)


def consumer_classes(cfg: DeploymentConfig, sensor_id: str) -> list[str] | None:
    """The class names of the models of the devices this sensor feeds, to number its labels by.

    A device scores its answers by comparing label and prediction numbers, so the sensor must
    number its labels as the device's model does. None when no device of the config takes this
    sensor (labels as the image set numbers them); a UserError when its devices disagree.
    """
    refs = {d.model for d in cfg.devices if d.source.kind == "sensor" and d.source.sensor == sensor_id}
    lists = {tuple(read_metadata(ref)["classes"]) for ref in refs}
    if len(lists) > 1:
        raise UserError(f"the devices fed by sensor {sensor_id!r} have models with different classes: {sorted(lists)}")
    return list(lists.pop()) if lists else None


class Replayer(Agent):
    """A sensor agent: frames out, nothing in."""

    def __init__(self, cfg: DeploymentConfig, sensor_id: str, frames: int | None = None) -> None:
        found = [s for s in cfg.sensors if s.id == sensor_id]
        if not found:
            raise UserError(f"no sensor {sensor_id!r} in the config; configured: {[s.id for s in cfg.sensors]}")
        super().__init__(cfg, sensor_id, "sensor", self._ignore)
        self.scfg = found[0]
        self.frames = frames
        self.sent = 0

    def _ignore(self, topic: str, payload: bytes, _props: Any) -> None:
        self.reject("unexpected", f"sensor received a message on {topic}")

    def health(self) -> dict[str, Any]:
        """Live status: frames published."""
        return {**super().health(), "frames": self.sent}

    def run(self) -> int:
        """Publish every frame of the source at its rate, then an ``end`` marker; exit 0."""
        self.link.start()
        if not self.link.wait_connected(10):
            log.warning("sensor %s: broker not reachable yet; frames are queued until it is", self.id)
        topic = self.topics.frames(self.id)
        src = self.scfg.source
        for frame in paced(
            open_source(src, self.stop, consumer_classes(self.cfg, self.id)), src, self.stop, self.frames
        ):
            header, payload = encode_image(frame.image, self.scfg.encoding)
            env = Envelope(
                {"id": f"{self.id}-{frame.index:08d}", "kind": "frame", "frame": frame.index, **header},
                payload,
                stamps=[("capture", frame.capture_ns)],
            )
            if frame.label is not None:
                env.header["label"] = frame.label
            self.link.publish(topic, encode(env), qos=1)
            self.sent += 1
            self.maybe_publish_health()
        self.link.publish(topic, encode(Envelope({"id": f"{self.id}-end", "kind": "end"})), qos=1)
        self.link.close()
        log.info("sensor %s published %d frames", self.id, self.sent)
        return 0
