"""Training and calibrating zoo models."""
