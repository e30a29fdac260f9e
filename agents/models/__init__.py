"""Staged multi-exit models: the zoo, checkpoints, calibration and costs."""
