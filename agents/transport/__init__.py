"""The wire: envelope codec, topic scheme and the MQTT client wrapper."""
