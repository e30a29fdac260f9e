"""Telemetry: shipping records and health to InfluxDB."""
