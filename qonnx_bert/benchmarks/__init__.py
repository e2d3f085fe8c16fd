"""Benchmarks and reports: the GLUE bench, latency, the results tables, the demo."""
