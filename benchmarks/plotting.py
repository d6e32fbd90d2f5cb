"""Figures shared by the harnesses: ratio bars around 1 on a log axis, saved small and byte-for-byte repeatable.

A ratio bar starts at 1 (the reference) and ends at the value, so a method cheaper than its reference reads as a bar
going down, not as a short bar from the axis' bottom. ``save`` drops the PNG's software/date metadata, so that
re-plotting unchanged JSON gives the same file (``python -m benchmarks.report --replot``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

#: Small files: BENCHMARKS.md embeds every figure, and each is committed next to its JSON (< 200 KB).
DPI = 80


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def ratio_bars(ax, names: Sequence[str], groups: dict[str, Sequence[float | None]], title: str,
               reference: str, legend: str | None = None) -> None:
    """Grouped bars of ``groups`` (label → one ratio per name) from 1 to each value, log scale; a missing or
    non-finite value has no bar. Each bar is labelled with its value, so 0.98 and 1.02 read apart."""
    width = 0.8 / max(len(groups), 1)
    values = [v for vs in groups.values() for v in vs if finite(v)]
    for i, (label, ratios) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(names))]
        kept = [(x, v) for x, v in zip(xs, ratios) if finite(v)]
        ax.bar([x for x, _ in kept], [v - 1 for _, v in kept], width, bottom=1, label=label, color=f"C{i}")
        for x, v in kept:
            ax.annotate(f"{v:.2f}", (x, v), xytext=(0, 2 if v >= 1 else -2), textcoords="offset points",
                        rotation=90, ha="center", va="bottom" if v >= 1 else "top", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    if values:
        low, high = min(min(values), 1.0), max(max(values), 1.0)
        ax.set_ylim(low / 1.6, high * 1.6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(f"× {reference} (log)", fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    if legend is not None:
        ax.legend(fontsize=7, title_fontsize=7, title=legend)


def save(fig, path: str) -> str:
    """Write ``fig`` as a PNG without the metadata that changes between runs (matplotlib version, no date)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
