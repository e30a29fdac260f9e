"""Offline evaluation: per-exit accuracy and calibration, latency, the cascade curve."""
