"""Which figures each kind of result folder has, and how to redraw them from its JSON without re-measuring.

``python -m benchmarks.report --replot`` calls :func:`replot` on every result folder (each harness also draws its
figures when it runs); :func:`names` tells the report which PNGs a section embeds, in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def _perf(result: dict[str, Any], folder: str) -> list[str]:
    from benchmarks.perf import report

    return ["perf.png"] if report.plot(result, os.path.join(folder, "perf.png")) else []


def _quality(result: dict[str, Any], folder: str) -> list[str]:
    from benchmarks.quality import report

    return report.plots(result, folder)


def _diffusion(result: dict[str, Any], folder: str) -> list[str]:
    from benchmarks.perf.diffusion_report import plot

    return ["diffusion.png"] if plot(result, os.path.join(folder, "diffusion.png")) else []


def _pairs(result: dict[str, Any], folder: str) -> list[str]:
    from benchmarks.perf.pairs import plot

    return ["pairs.png"] if plot(result, os.path.join(folder, "pairs.png")) else []


def _fsdp(result: dict[str, Any], folder: str) -> list[str]:
    from benchmarks.perf.fsdp_memory import plot

    return ["fsdp.png"] if plot(result, os.path.join(folder, "fsdp.png")) else []


def _soup(result: dict[str, Any], folder: str) -> list[str]:
    from benchmarks.perf.soup import plot

    return ["soup.png"] if plot(result, os.path.join(folder, "soup.png")) else []


#: Result file → the function that draws its figures into the folder (returns the names written).
DRAW: dict[str, Callable[[dict[str, Any], str], list[str]]] = {
    "perf.json": _perf, "quality.json": _quality, "diffusion.json": _diffusion, "pairs.json": _pairs,
    "fsdp.json": _fsdp, "soup.json": _soup,
}


def names(file: str, result: dict[str, Any]) -> tuple[str, ...]:
    """The PNG names a section of result file ``file`` may embed (the report embeds those that exist)."""
    if file == "perf.json":
        return ("perf.png",)
    if file in DRAW and file not in ("perf.json", "quality.json"):
        return (file.replace(".json", ".png"),)
    if file == "quality.json":
        from benchmarks.quality.report import LEGACY_SCENARIOS_PNG, scenario_png

        return ("quality.png", *(scenario_png(n) for n in result.get("scenarios") or {}), LEGACY_SCENARIOS_PNG)
    return ()


def replot(path: str) -> list[str]:
    """Redraw the figures of result file ``path`` in its folder; the names written (none for a kind without
    figures, or without matplotlib)."""
    draw = DRAW.get(os.path.basename(path))
    if draw is None:
        return []
    with open(path) as handle:
        result = json.load(handle)
    return draw(result, os.path.dirname(path))
