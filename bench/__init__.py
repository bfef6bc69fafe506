"""Benchmarks of physflow (run from the repository root, e.g. ``python bench/dispatch_overhead.py``)."""
