"""The topic scheme (documented for users in docs/topics.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

#: The longest topic MQTT allows (its length is a two-byte field).
MAX_TOPIC_BYTES = 65535


@dataclass(frozen=True)
class Topics:
    """Every topic of one deployment: ``cascade/<deployment>/...``."""

    deployment: str

    @property
    def root(self) -> str:
        """The common prefix."""
        return f"cascade/{self.deployment}"

    def requests(self, tier: str) -> str:
        """Work for a tier (frames or activations); devices and lower tiers publish here."""
        return f"{self.root}/{tier}/requests"

    def shared_requests(self, tier: str) -> str:
        """The shared-subscription filter through which a tier's workers split its requests."""
        return f"$share/{tier}/{self.requests(tier)}"

    def results(self, device_id: str) -> str:
        """Answers for one device."""
        return f"{self.root}/device/{device_id}/results"

    def frames(self, sensor_id: str) -> str:
        """Frames from one (simulated) sensor."""
        return f"{self.root}/sensors/{sensor_id}/frames"

    def status(self, agent_id: str) -> str:
        """Retained availability and live status of one agent."""
        return f"{self.root}/agents/{agent_id}/status"

    def health(self, agent_id: str) -> str:
        """Live JSON status of one agent, every few seconds (counters, queue depth, frames/s)."""
        return f"{self.root}/agents/{agent_id}/health"

    def is_results(self, topic: object) -> bool:
        """Whether ``topic`` is a device's results topic of this deployment (where a request may ask for its answer)."""
        if not publishable(topic):
            return False
        prefix, suffix = f"{self.root}/device/", "/results"
        middle = topic[len(prefix) : -len(suffix)] if topic.startswith(prefix) and topic.endswith(suffix) else ""
        return bool(middle) and "/" not in middle

    def clock(self, tier: str) -> str:
        """Clock pings for every worker of a tier (each answers on the sender's clock reply topic)."""
        return f"{self.root}/{tier}/clock"

    def clock_replies(self, agent_id: str) -> str:
        """Answers to one agent's clock pings."""
        return f"{self.root}/agents/{agent_id}/clock"

    def control(self, *parts: str) -> str:
        """Retained control messages (plans, thresholds)."""
        return "/".join([self.root, "control", *parts])


def publishable(topic: object) -> TypeGuard[str]:
    """Whether a topic a message names (``reply_to``) is one we can publish to: a non-empty string, no wildcards."""
    return isinstance(topic, str) and 0 < len(topic.encode()) <= MAX_TOPIC_BYTES and not any(c in topic for c in "+#\0")
