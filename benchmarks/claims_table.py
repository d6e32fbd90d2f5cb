"""README's claims table: one line per paper claim, its verdict at the strongest scale measured, from the results.

Every ``benchmarks/results/*/quality.json`` lists the claims its scenarios judged (``benchmarks.quality.claims``).
A claim measured in several runs is shown at the strongest of them: the largest pre-trained decoder first, then a
run whose learning rates were chosen per row on a validation split (``--lr-sweep``), then the longest fine-tuning
budget, then the newest result folder name in sort order; the other runs are counted beside it. The table is written
between markers in README.md by ``python -m benchmarks.report`` and checked by ``--check``, like BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
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

    @property
    def strength(self) -> tuple[int, bool, int, str]:
        return self.parameters, self.swept, self.steps, self.run


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
        scale = dict(parameters=int((result.get("pretrained") or {}).get("parameters") or 0), swept="--lr-sweep" in command,
                     steps=int(((result.get("config") or {}).get("finetune") or {}).get("steps") or 0))
        for claim in result.get("claims", []):
            if claim.get("verdict", NOT_MEASURED) == NOT_MEASURED:
                continue
            entry = claims.setdefault(claim["claim"], (claim, []))
            entry[1].append(Measured(run, claim["verdict"], claim.get("detail", ""), **scale))
    return claims


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


def markdown(results_dir: str = common.RESULTS_DIR) -> str:
    """The generated section's body: a summary line and the table, one row per measured claim."""
    rows, reproduced = [], 0
    claims = measured_claims(results_dir)
    for claim_id, (claim, runs) in sorted(claims.items(), key=lambda item: item[0].lower()):
        best = max(runs, key=lambda m: m.strength)
        reproduced += best.verdict == "reproduced"
        others = [m for m in runs if m is not best]
        elsewhere = (f"{len(others)}: {sum(m.verdict == 'reproduced' for m in others)} reproduced" if others else "")
        link = f"[{best.run}](benchmarks/results/{best.run}/quality.md)" + (" (lr swept)" if best.swept else "")
        rows.append(f"| `{claim_id}` | {_cell(claim['text'])} ({_cell(claim.get('paper', ''))}) | "
                    f"**{best.verdict}** | {_cell(headline(best.detail))} | {link} | {elsewhere} |")
    header = ("| claim | what the paper says (paper) | verdict at the strongest scale | numbers | run | other runs |\n"
              "|---|---|---|---|---|---|\n")
    summary = (f"{len(claims)} claims measured; {reproduced} reproduced in direction at the strongest scale measured "
               "(3 seeds, mean ± std; the rule of `benchmarks/quality/claims.py`).\n\n")
    return summary + header + "\n".join(rows) + "\n"
