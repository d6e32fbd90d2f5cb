"""The quality harness: ``python -m benchmarks.quality`` (see BENCHMARKS.md)."""
