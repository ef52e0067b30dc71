"""Evaluation: per-exit outputs, the anytime/budgeted protocol, post-hoc calibration,
real early exit, reliability."""
