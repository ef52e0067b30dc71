"""Shared services: atomic I/O, run locks, one-line errors, registries."""
