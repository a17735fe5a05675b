"""Benchmarks: `bench` (make bench) and the stream-runtime measurement of ADR 0001."""
