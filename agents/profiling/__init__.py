"""Measure a node and emulate it: per-stage profiles, and a per-layer-type latency predictor fitted from them."""
