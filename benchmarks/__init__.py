"""Benchmark harnesses of ftplugins (not part of the installed package).

``python -m benchmarks.perf`` measures speed and memory of every method against full fine-tuning
and PEFT LoRA; ``python -m benchmarks.quality`` checks each paper's claim in direction on a tiny
model pre-trained on synthetic tasks. Both run from the repository root; BENCHMARKS.md has the
numbers. The method table both use is :mod:`benchmarks.methods`.
"""
