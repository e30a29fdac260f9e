"""cascade: device → edge → cloud inference over MQTT."""

__version__ = "0.1.0"
