"""Measuring memories: `evaluate(cfg)` with resumable records, context ablations, statistics,
markdown reports, and `bench(cfg)` with its memory probe. Imports every library layer below it and
the Python API (api.py)."""
