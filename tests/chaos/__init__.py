"""Chaos runs: real node processes, real faults, every history checked (python -m chaos)."""
