"""The performance harness: ``python -m benchmarks.perf`` (see BENCHMARKS.md)."""
