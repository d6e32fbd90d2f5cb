"""README's claims table: one line per paper claim, its verdict at the strongest scale measured and its diagnoses.

Every ``benchmarks/results/*/quality.json`` lists the claims its scenarios judged (``benchmarks.quality.claims``).
A claim measured in several runs is shown at the strongest of them that decided it (a "not comparable" run is
counted beside it, and shown only when no run decided): the largest pre-trained decoder first (for a claim whose
scenario reads it; MiniLM, diffusion and GAN scenarios do not, so the decoder a run happened to load does not rank
it), then a run whose learning rates were chosen per row on a validation split (``--lr-sweep``, or a scenario whose
result says it chose its rows' rates so: ``config["lr_sweep"]``), then the longest fine-tuning
budget, then the most training examples (a reduced-data diagnosis run never outranks the run at the standard
size), then the newest result folder name in sort order; the other runs are counted beside it. A claim with a
variant in ``claims.PAPER_PROTOCOL`` (the paper's own protocol, where the claim's first run here departed from it)
is shown at that variant's strongest run, its first run among the diagnoses. The table is written
between markers in README.md by ``python -m benchmarks.report`` and checked by ``--check``, like BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from benchmarks import common

NAME = "claims"
NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Measured:
    """One claim's verdict in one result folder, with what makes that run stronger than another."""

    run: str
    verdict: str
    detail: str
    parameters: int
    swept: bool
    steps: int
    train_examples: int = 0

    @property
    def decided(self) -> bool:
        """The run judged the claim ("reproduced" or "NOT reproduced"), rather than finding it not comparable."""
        return self.verdict in ("reproduced", "NOT reproduced")

    @property
    def strength(self) -> tuple[int, bool, int, int, str]:
        return self.parameters, self.swept, self.steps, self.train_examples, self.run


def measured_claims(results_dir: str = common.RESULTS_DIR) -> dict[str, tuple[dict[str, Any], list[Measured]]]:
    """Claim id -> (its description, every run that judged it), runs in sort order of their folders."""
    claims: dict[str, tuple[dict[str, Any], list[Measured]]] = {}
    for run in sorted(os.listdir(results_dir)):
        path = os.path.join(results_dir, run, "quality.json")
        if not os.path.isfile(path):
            continue
        with open(path) as handle:
            result = json.load(handle)
        command = str(result.get("machine", {}).get("command") or "")
        finetune = (result.get("config") or {}).get("finetune") or {}
        parameters = int((result.get("pretrained") or {}).get("parameters") or 0)
        steps, examples = int(finetune.get("steps") or 0), int(finetune.get("train_examples") or 0)
        for claim in result.get("claims", []):
            if claim.get("verdict", NOT_MEASURED) == NOT_MEASURED:
                continue
            scenario = claim.get("scenario")
            chose_rates = bool(((result.get("scenarios") or {}).get(scenario) or {}).get("config", {}).get("lr_sweep"))
            entry = claims.setdefault(claim["claim"], (claim, []))
            entry[1].append(Measured(run, claim["verdict"], claim.get("detail", ""),
                                     parameters=parameters if reads_decoder(scenario) else 0,
                                     swept="--lr-sweep" in command or chose_rates, steps=steps,
                                     train_examples=examples))
    return claims


def reads_decoder(scenario: str | None) -> bool:
    """Whether the claim's scenario fine-tunes the harness's pre-trained decoder (``target`` and most scenarios do;
    a module with ``NEEDS_DECODER = False`` does not, whatever decoder its run loaded)."""
    from benchmarks.quality import scenarios

    if scenario in (None, "target") or scenario not in scenarios.MODULES:
        return True
    return bool(getattr(scenarios.module(scenario), "NEEDS_DECODER", True))


def headline(detail: str) -> str:
    """The verdict's own comparison: ``detail`` up to its first ``;`` outside parentheses (the rest lists side rows)."""
    depth = 0
    for i, char in enumerate(detail):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth == 0:
            return detail[:i]
    return detail


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _strongest(runs: list[Measured]) -> Measured:
    # A decided verdict first: a run where the claim could not be judged (its premise did not happen, its baseline
    # collapsed) does not hide another run that decided it; it is counted beside it.
    return max(runs, key=lambda m: (m.decided, m.strength))


def _other_runs(best: Measured, runs: list[Measured]) -> str:
    others = [m for m in runs if m is not best]
    if not others:
        return ""
    undecided = sum(not m.decided for m in others)
    return (f"{len(others)}: {sum(m.verdict == 'reproduced' for m in others)} reproduced"
            + (f", {undecided} not comparable" if undecided else ""))


def condition(variant: str) -> str:
    """What a variant changes, from its id: ``"x>y (p=0.4)"`` -> ``"p=0.4"`` (the whole id if it has no suffix)."""
    match = re.search(r"\(([^()]*)\)$", variant)
    return match.group(1) if match else variant


def markdown(results_dir: str = common.RESULTS_DIR, variant_of: dict[str, str] | None = None,
             paper_protocol: dict[str, str] | None = None) -> str:
    """The generated section's body: a summary line and the table, one row per paper claim, with its variants
    (``claims.VARIANT_OF``: the claim re-tested under a condition a diagnosis chose) as that row's diagnoses.

    A claim with a measured variant in ``claims.PAPER_PROTOCOL`` (the paper's own protocol, where the harness's first
    run of the claim departed from it) is judged by that variant; its first run is shown among the diagnoses."""
    from benchmarks.quality import claims as claim_defs

    variant_of = claim_defs.VARIANT_OF if variant_of is None else variant_of
    paper_protocol = claim_defs.PAPER_PROTOCOL if paper_protocol is None else paper_protocol
    known = {c.key: {"claim": c.key, "text": c.text, "paper": c.paper} for c in claim_defs.CLAIMS}
    measured = measured_claims(results_dir)
    groups: dict[str, list[str]] = {}
    for claim_id in measured:
        base = variant_of.get(claim_id, claim_id)
        groups.setdefault(base, [])
        if base != claim_id:
            groups[base].append(claim_id)
    rows, verdicts, rescued = [], {"reproduced": 0, "NOT reproduced": 0, "not comparable": 0, NOT_MEASURED: 0}, 0
    at_protocol, first_reproduced = 0, 0
    for base, variants in sorted(groups.items(), key=lambda item: item[0].lower()):
        claim, first_runs = measured.get(base, (known.get(base, {"claim": base, "text": base, "paper": ""}), []))
        protocol = next((v for v in sorted(variants) if v in paper_protocol), None)
        runs = measured[protocol][1] if protocol else first_runs
        best = _strongest(runs) if runs else None
        verdict = best.verdict if best else NOT_MEASURED
        verdicts[verdict if verdict in verdicts else "not comparable"] += 1
        strongest = {v: _strongest(measured[v][1]) for v in sorted(variants, key=str.lower) if v != protocol}
        diagnoses = [f"`{condition(v)}` {_scale_cell(m)}" for v, m in strongest.items()]
        judged_as = ""
        if protocol:
            at_protocol += 1
            judged_as = f" at the paper's protocol, `{condition(protocol)}` ({_cell(paper_protocol[protocol])})"
            if first_runs:
                first = _strongest(first_runs)
                first_reproduced += first.verdict == "reproduced"
                diagnoses.insert(0, f"`the harness's first protocol` {_scale_cell(first)}")
        rescued += verdict != "reproduced" and any(m.verdict == "reproduced" for m in strongest.values())
        link = (f"[{best.run}](BENCHMARKS.md#{best.run}) ([record](benchmarks/results/{best.run}/quality.md))"
                + (" (lr swept)" if best.swept else "") if best else "")
        rows.append(f"| `{base}` | {_cell(claim['text'])} ({_cell(claim.get('paper', ''))}) | "
                    f"**{verdict}**{judged_as} | {_cell(headline(best.detail)) if best else ''} | {link} | "
                    f"{'; '.join(diagnoses)} | "
                    f"{_other_runs(best, runs) if best else ''} |")
    header = ("| claim | what the paper says (paper) | verdict at the strongest scale | numbers | run | "
              "diagnoses: the claim under a condition (✓ reproduced, ✗ not, ○ not comparable) | other runs |\n"
              "|---|---|---|---|---|---|---|\n")
    all_verdicts = sum(len(runs) > 0 for _, runs in measured.values())
    all_reproduced = sum(_strongest(runs).verdict == "reproduced" for _, runs in measured.values())
    protocol_note = (f". {at_protocol} are judged by a run at the paper's protocol, where the harness's first run of "
                     "the claim departed from it (a default of ours, or a model without what the method needs): "
                     f"{first_reproduced} of those first runs reproduced, each is shown in its line's diagnoses"
                     if at_protocol else "")
    summary = (f"{len(groups)} paper claims; as stated, at the strongest scale measured: {verdicts['reproduced']} "
               f"reproduced in direction, {verdicts['NOT reproduced']} not reproduced, {verdicts['not comparable']} "
               "not comparable (their premise did not occur on the model)"
               + (f", {verdicts[NOT_MEASURED]} measured only under a condition" if verdicts[NOT_MEASURED] else "")
               + protocol_note
               + f". {rescued} of the {len(groups) - verdicts['reproduced']} others are reproduced under a condition a "
               f"diagnosis chose (the diagnoses column). All {all_verdicts} verdicts, variants included: "
               f"{all_reproduced} reproduced. "
               "3 seeds, mean ± std; the rule of `benchmarks/quality/claims.py`.\n\n")
    return summary + header + "\n".join(rows) + "\n"


# --- the same claims across scales: the diagnosis "does the effect appear as the model grows?" ---------------------

SCALE_NAME = "claims-by-scale"
_DELTA = re.compile(r"Δ ([+-]?\d+(?:\.\d+)?)")
_MARK = {"reproduced": "✓", "NOT reproduced": "✗"}


def _column(measured: Measured) -> tuple[int, bool]:
    return measured.parameters, measured.swept


def _column_title(column: tuple[int, bool]) -> str:
    parameters, swept = column
    scale = f"{parameters / 1e6:.2g}M decoder" if parameters else "no decoder"
    return scale + (", lr swept" if swept else "")


def _scale_cell(measured: Measured) -> str:
    if not measured.decided:  # why it could not be judged is in the run's own table
        return f"○ ([{measured.run}](benchmarks/results/{measured.run}/quality.md))"
    delta = _DELTA.search(headline(measured.detail))
    return (f"{_MARK.get(measured.verdict, measured.verdict)}" + (f" Δ {delta.group(1)}" if delta else "")
            + f" ([{measured.run}](benchmarks/results/{measured.run}/quality.md))")


def by_scale_markdown(results_dir: str = common.RESULTS_DIR) -> str:
    """BENCHMARKS.md's claims-by-scale table: each claim measured in more than one setting (pre-trained decoder
    size × learning rates swept or not), its verdict and Δ in each — whether an effect appears, grows or fades as
    the model grows and as each row gets its own learning rate. Per setting, the run with the longest budget (steps,
    then training examples)."""
    kept = []
    for claim_id, (claim, runs) in sorted(measured_claims(results_dir).items(), key=lambda item: item[0].lower()):
        best: dict[tuple[int, bool], Measured] = {}
        for m in runs:
            if _column(m) not in best or m.strength > best[_column(m)].strength:
                best[_column(m)] = m
        if len(best) > 1:
            kept.append((claim_id, claim, best))
    columns = sorted({column for _, _, best in kept for column in best})
    rows = [f"| `{claim_id}` | {_cell(claim['text'])} | "
            + " | ".join(_scale_cell(best[c]) if c in best else "–" for c in columns) + " |"
            for claim_id, claim, best in kept]
    header = ("| claim | what the paper says | " + " | ".join(_column_title(c) for c in columns) + " |\n"
              + "|---|---|" + "---|" * len(columns) + "\n")
    return (f"{len(rows)} claims measured in more than one setting; ✓ reproduced, ✗ not reproduced (Δ: the "
            "verdict's own difference, method − reference, where it has one), ○ not comparable (the claim's premise "
            "did not happen or its baseline collapsed; the run says which); per setting the longest budget.\n\n"
            + header + "\n".join(rows) + "\n")
