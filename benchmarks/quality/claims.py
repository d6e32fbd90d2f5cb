"""The papers' claims, each checked in direction on the harness's results.

A claim names the method rows it compares and the scenario (experiment) it needs. Only the
``target`` scenario (fine-tune on a held-out task, score target accuracy and retention) exists so
far; claims of other scenarios are listed with "not measured yet" until their experiment lands,
so the table shows what is still owed. A verdict quotes its numbers (mean ± std over seeds) and
says plainly when a claim does not reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Accuracy gap (absolute) still called "the same level" when a claim is about parity.
PARITY = 0.05


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    paper: str
    needs: tuple[str, ...]
    check: Callable[[dict[str, Any]], tuple[bool, str]] | None = None
    scenario: str = "target"


def _m(summary: dict[str, Any], name: str, metric: str) -> tuple[float, float]:
    row = summary[name]
    return row[f"{metric}_mean"], row[f"{metric}_std"]


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def better(metric: str, a: str, b: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    """``a`` scores higher than ``b`` on ``metric`` (mean over seeds)."""

    def check(summary):
        (ma, sa), (mb, sb) = _m(summary, a, metric), _m(summary, b, metric)
        delta = ma - mb
        spread = "" if abs(delta) > max(sa, sb) else "; the difference is within one seed std"
        return ma > mb, f"{metric}: {a} {_pm(ma, sa)} vs {b} {_pm(mb, sb)} (Δ {delta:+.3f}{spread})"

    return check


def parity(metric: str, a: str, b: str, tolerance: float = PARITY) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    """``a`` reaches ``b``'s level on ``metric``: mean at least ``b``'s minus ``tolerance``."""

    def check(summary):
        (ma, sa), (mb, sb) = _m(summary, a, metric), _m(summary, b, metric)
        return ma >= mb - tolerance, (f"{metric}: {a} {_pm(ma, sa)} vs {b} {_pm(mb, sb)} "
                                      f"(Δ {ma - mb:+.3f}, parity tolerance {tolerance})")

    return check


def forgets_less(a: str, b: str, tolerance: float = PARITY) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    """``a`` keeps more of the pre-training tasks than ``b`` at a target accuracy no worse than ``b``'s − tolerance."""

    def check(summary):
        (ra, sra), (rb, srb) = _m(summary, a, "retention"), _m(summary, b, "retention")
        (ta, sta), (tb, stb) = _m(summary, a, "target"), _m(summary, b, "target")
        ok = ra > rb and ta >= tb - tolerance
        spread = "" if abs(ra - rb) > max(sra, srb) else "; the retention difference is within one seed std"
        return ok, (f"retention {a} {_pm(ra, sra)} vs {b} {_pm(rb, srb)}; target {a} {_pm(ta, sta)} vs "
                    f"{b} {_pm(tb, stb)}{spread}")

    return check


CLAIMS: list[Claim] = [
    Claim("masked_thought>sft", "Masked Thought improves multi-step arithmetic (written intermediate steps) over "
          "plain SFT", "Chen et al. 2024 (2403.02178)", ("masked_thought", "full"),
          better("target", "masked_thought", "full")),
    Claim("ssf~lora", "SSF reaches LoRA-level accuracy at a similar budget (tiny decoder)",
          "Lian et al. 2022 (2210.08823)", ("ssf", "lora-r16"), parity("target", "ssf", "lora-r16")),
    Claim("bottleneck~lora", "Bottleneck adapters (LLM-Adapters series) reach LoRA-level accuracy", "LLM-Adapters / PETL-AST",
          ("bottleneck-series", "lora-r16"), parity("target", "bottleneck-series", "lora-r16")),
    Claim("block_lora~lora", "Block-LoRA reaches LoRA-level accuracy with fewer parameters", "2501.16720",
          ("block_lora", "lora-r16"), parity("target", "block_lora", "lora-r16")),
    Claim("lift<full forgetting", "LIFT forgets less than full fine-tuning at similar target accuracy", "LIFT",
          ("lift-5pct", "full"), forgets_less("lift-5pct", "full")),
    Claim("hft<full forgetting", "HFT forgets less than full fine-tuning at similar target accuracy", "2404.18466",
          ("hft", "full"), forgets_less("hft", "full")),
    Claim("lift>=lora", "LIFT at a LoRA-equal budget matches or beats LoRA", "LIFT",
          ("lift-lora-budget", "lora-r16"), parity("target", "lift-lora-budget", "lora-r16", tolerance=0.0)),
    Claim("ssf~lora (encoder)", "SSF / bottleneck / Block-LoRA reach LoRA-level accuracy on the MiniLM encoder "
          "with a synthetic classification set", "SSF, LLM-Adapters, Block-LoRA", ("ssf", "lora-r16"),
          scenario="minilm-classification"),
    Claim("many_icl>last-answer", "Many-shot in-context fine-tuning beats last-answer-only training", "ManyICL",
          ("many_icl",), scenario="many-shot"),
    Claim("deep_align keeps refusals", "deep_align keeps a learned refusal behaviour after benign fine-tuning far "
          "better than SFT; aligned_prefix restores refusals", "Qi et al. 2024; NOICE", ("deep_align",),
          scenario="alignment"),
    Claim("graft 1% >= 90%", "Grafting a ≤1% region recovers ≥90% of the fine-tuned accuracy", "Panigrahi et al. 2023",
          ("graft",), scenario="grafting"),
    Claim("lt_sft deltas compose", "LT-SFT task and 'language' deltas compose", "Ansell et al. 2022", ("lt_sft",),
          scenario="composition"),
]


def verdicts(summary: dict[str, Any], skipped: dict[str, str], scenarios: set[str]) -> list[dict[str, Any]]:
    """One verdict per claim: reproduced / not reproduced / not measured yet (with why)."""
    out = []
    for claim in CLAIMS:
        row = {"claim": claim.key, "text": claim.text, "paper": claim.paper, "methods": list(claim.needs)}
        missing = [n for n in claim.needs if n not in summary or not math.isfinite(summary[n]["target_mean"])]
        if claim.scenario not in scenarios or claim.check is None:
            row.update(verdict="not measured yet", detail=f"needs the '{claim.scenario}' experiment (not built yet)")
        elif missing:
            reasons = "; ".join(f"{n}: {skipped.get(n, 'not selected in this run (--methods / --baselines)')}"
                                for n in missing)
            row.update(verdict="not measured yet", detail=reasons)
        else:
            ok, detail = claim.check(summary)
            row.update(verdict="reproduced" if ok else "NOT reproduced", detail=detail)
        out.append(row)
    return out
