"""Benchmark and soak tooling: measures the server; not part of the installed package."""
