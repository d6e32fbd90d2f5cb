"""BENCHMARKS.md's numeric tables, regenerated from the committed result files (so the document cannot drift).

Every folder ``benchmarks/results/NAME/`` with a ``perf.json``, ``quality.json``, ``kernels.json``, ``pairs.json``,
``selection.json``, ``soup.json``, ``fsdp.json``, ``diffusion.json`` or ``build.json`` (a decoder build of the
quality harness) is one generated section of BENCHMARKS.md, written between
the markers::

    <!-- generated: NAME (python -m benchmarks.report) -->
    ...
    <!-- end generated: NAME -->

One section, ``claims-by-scale``, is drawn from all the quality results together (:data:`DERIVED`): each claim
judged in more than one setting (decoder size, learning rates swept or not) side by side.

Prose outside the markers is hand-written and left alone. ``python -m benchmarks.report`` rewrites the sections in
place; ``--check`` (what CI runs) rewrites nothing and exits non-zero naming the first section that differs from
what its result file gives, or a result folder that has no section. ``--replot`` first redraws every folder's figures
from its JSON (:mod:`benchmarks.figures`; no re-run), then regenerates the sections that embed them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any

from benchmarks import common, figures
from benchmarks.perf.diffusion_report import markdown as diffusion_markdown
from benchmarks.perf.kernels_report import markdown as kernels_markdown

DOCUMENT = os.path.join(common.REPO_ROOT, "BENCHMARKS.md")
README = os.path.join(common.REPO_ROOT, "README.md")  # holds one generated section: the claims table
RESULT_FILES = ("perf.json", "quality.json", "kernels.json", "pairs.json", "diffusion.json", "selection.json",
                "soup.json", "fsdp.json", "build.json")
BEGIN = "<!-- generated: {name} (python -m benchmarks.report) -->"
END = "<!-- end generated: {name} -->"
SECTION = re.compile(r"<!-- generated: (?P<name>[\w.-]+) \(python -m benchmarks\.report\) -->\n"
                     r"(?P<body>.*?)<!-- end generated: (?P=name) -->", re.S)
MB = 2**20


# --- reading the results -----------------------------------------------------------------------


def result_folders(results_dir: str = common.RESULTS_DIR) -> dict[str, str]:
    """Section name (the folder's name) → its result file, for every folder that holds one."""
    found = {}
    for name in sorted(os.listdir(results_dir)):
        for file in RESULT_FILES:
            path = os.path.join(results_dir, name, file)
            if os.path.isfile(path):
                found[name] = path
                break
    return found


def is_dirty(machine: dict[str, Any]) -> bool:
    """Recorded from a tree with uncommitted changes: the ``dirty`` field, or the older ``+dirty`` commit suffix."""
    return bool(machine.get("dirty")) or str(machine.get("git_commit") or "").endswith("+dirty")


def provenance(machine: dict[str, Any], judged: dict[str, Any] | None = None) -> str:
    """Who recorded the numbers; ``judged``: a quality record's claims judged again later (``--rejudge``)."""
    commit = str(machine.get("git_commit") or "unknown").removesuffix("+dirty")
    mark = (" **⚠ dirty tree** (uncommitted changes on top of this commit: the commit alone may not reproduce "
            "these numbers)") if is_dirty(machine) else ""
    rejudged = ""
    if judged:
        rejudged = (f" Claims judged again by the rules at commit `{judged.get('git_commit')}`"
                    + (" **⚠ dirty tree**" if judged.get("dirty") else "") + " (`--rejudge`, nothing retrained).")
    return (f"Recorded by `{machine.get('command')}` at commit `{commit}`{mark}; {machine.get('device_name')}, "
            f"torch {machine.get('versions', {}).get('torch')}, torch threads {machine.get('torch_threads')}."
            + rejudged)


def _figures(folder: str, rel: str, names: tuple[str, ...]) -> list[str]:
    return [f"![{rel}/{png}]({rel}/{png})\n" for png in names if os.path.isfile(os.path.join(folder, png))]


# --- rendering ---------------------------------------------------------------------------------


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def perf_section(result: dict[str, Any]) -> list[str]:
    """Per batch shape: step time and training memory, absolute and as ratios to full, to LoRA r=16 and to the
    floor (result files without a floor row show no floor ratio)."""
    out = []
    for shape, block in result["results"].items():
        methods = block["methods"]
        with_setup = any(row.get("setup_s") is not None for row in methods.values())
        floor = "floor" in methods
        rows = []
        for name, row in methods.items():
            if row.get("status") == "error":
                rows.append([f"`{name}`", "error: " + row.get("reason", "")[:80]]
                            + [""] * (8 + with_setup + 2 * floor))
                continue
            cells = [f"`{name}`", common.fmt(row["step_s"] * 1e3, ".1f"), common.fmt(row["step_vs_full"], ".2f"),
                     common.fmt(row["step_vs_lora-r16"], ".2f")]
            if floor:
                cells.append(common.fmt(row.get("step_vs_floor"), ".2f"))
            if with_setup:
                cells.append(common.fmt(row.get("setup_s"), ".2f"))
            cells += [common.fmt(_mb(row["peak_train_bytes"]), ".0f"), common.fmt(row["memory_vs_full"], ".2f"),
                      common.fmt(row["memory_vs_lora-r16"], ".2f")]
            if floor:
                cells.append(common.fmt(row.get("memory_vs_floor"), ".2f"))
            cells += [common.fmt(_mb(row["persistent_bytes"]), ".1f"),
                      f"{row['trainable_params']:,}", common.fmt(row.get("inference_vs_base"), ".2f")]
            rows.append(cells)
        header = ["method", "step ms", "step × full", "step × LoRA16", *(["step × floor"] if floor else []),
                  *(["setup s"] if with_setup else []), "train peak MB", "memory × full", "memory × LoRA16",
                  *(["memory × floor"] if floor else []), "trainable+optim MB", "trainable params",
                  "inference × base"]
        out.append(f"\n**Batch {shape.replace('x', ' × ')}**\n\n")
        out.append(common.markdown_table(header, rows))
        overhead = block.get("overhead")
        if overhead:
            out.append(f"\nPlugin overhead: no-op plugin / plain TRL step "
                       f"{common.fmt(overhead['noop_plugin_vs_trl_step'], '.2f')}.\n")
    peers = result.get("peers")
    if peers and "error" not in peers:
        rows = [[shape, f"`{name}`", common.fmt(row.get("step_s", math.nan) * 1e3, ".1f"),
                 common.fmt(row.get("step_vs_lora-r16"), ".2f"), common.fmt(row.get("memory_vs_lora-r16"), ".2f"),
                 f"{row.get('trainable_params', 0):,}"]
                for shape, block in peers["results"].items() for name, row in block["methods"].items()]
        versions = peers.get("machine", {}).get("versions", {})
        out.append(f"\n**Peer: AdapterHub `adapters` {versions.get('adapters')}** (its own environment, transformers "
                   f"{versions.get('transformers')}; ratios to PEFT LoRA r=16 in that environment)\n\n")
        out.append(common.markdown_table(["batch", "peer config", "step ms", "step × LoRA16", "memory × LoRA16",
                                          "trainable params"], rows))
        if is_dirty(peers.get("machine", {})):
            out.append("\nThe peer run's commit is marked **⚠ dirty tree** too.\n")
    return out


def _pm(row: dict[str, Any], metric: str) -> str:
    return f"{common.fmt(row.get(f'{metric}_mean'), '.3f')} ± {common.fmt(row.get(f'{metric}_std'), '.3f')}"


def quality_section(result: dict[str, Any]) -> list[str]:
    """The pre-trained model, the target method table, the lr sweep, the scenarios and the claims' verdicts."""
    from benchmarks.quality import report

    pre = result["pretrained"]
    if "target" not in result.get("scenarios_run", ["target"]):
        return scenario_tables(result) + _claims(result)
    out = ["\nPre-trained decoder: accuracy when it was built (its own check): "
           + ", ".join(f"{k} {v:.2f}" for k, v in pre["accuracy"].items()) + "."]
    before = (result.get("summary") or {}).get("pretrained", {}).get("retention_per_task")
    if before and "target" in result.get("scenarios_run", ["target"]):
        out.append(" On this run's held-out retention prompts: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in before.items()) + ".")
    out.append("\n")
    if "target" in result.get("scenarios_run", ["target"]):
        rows = [[f"`{name}`", _pm(row, "target"), _pm(row, "retention"), _pm(row, "forgetting"),
                 common.fmt(row.get("learning_rate"), ".0e"), f"{row.get('trainable_params', 0):,}"]
                for name, row in result["summary"].items()]
        out.append(f"\n**Target `{result['config']['finetune']['target']}`**, mean ± std over seeds "
                   f"{result['config']['seeds']}\n\n")
        out.append(common.markdown_table(["method", "target acc.", "retention", "forgetting", "lr",
                                          "trainable params"], rows))
        out += [_demote(part) for part in report.sweep_section(result)]
    return out + scenario_tables(result) + _claims(result)


def _claims(result: dict[str, Any]) -> list[str]:
    """The verdicts this run measured (a scenario's run leaves the other scenarios' claims "not measured yet")."""
    measured = [[v["text"], f"**{v['verdict']}**", v["detail"]] for v in result["claims"]
                if v["verdict"] != "not measured yet"]
    if not measured:
        return []
    return ["\n**Claims**\n\n", common.markdown_table(["claim", "verdict", "numbers / reason"], measured)]


def scenario_tables(result: dict[str, Any]) -> list[str]:
    """One row × metric table per scenario besides ``target`` (its design is prose in BENCHMARKS.md)."""
    from benchmarks.quality.report import scenario_sweep_table

    out = []
    for name, scenario in (result.get("scenarios") or {}).items():
        metrics = scenario["metrics"]
        rows = [[f"`{row_name}`", *[_pm(row, key) if f"{key}_mean" in row else "–" for key, _ in metrics],
                 str(len(row.get("per_seed", [])))] for row_name, row in scenario["rows"].items()]
        out.append(f"\n**Scenario `{name}`**: {scenario['title']}, mean ± std over seeds\n\n")
        out.append(common.markdown_table(["row", *[label for _, label in metrics], "seeds"], rows))
        out += scenario_sweep_table(scenario)
    return out


def _demote(markdown: str) -> str:
    """The harness report's ``## Heading`` lines as bold lines, so they nest inside BENCHMARKS.md's sections."""
    return re.sub(r"^## (.*)$", r"\n**\1**", markdown, flags=re.M)


def section(name: str, path: str) -> str:
    """The generated body of section ``name`` from its result file ``path``."""
    with open(path) as handle:
        result = json.load(handle)
    folder = os.path.dirname(path)
    rel = os.path.relpath(folder, common.REPO_ROOT).replace(os.sep, "/")
    file = os.path.basename(path)
    pngs = figures.names(file, result)
    if file == "perf.json":
        body = perf_section(result)
    elif file == "quality.json":
        body = quality_section(result)
    elif file == "pairs.json":
        from benchmarks.perf.pairs import markdown as pairs_markdown

        body = ["\n" + pairs_markdown(result)]
    elif file == "diffusion.json":
        body = ["\n" + diffusion_markdown(result)]
    elif file == "selection.json":
        from benchmarks.perf.selection import markdown as selection_markdown

        body = ["\n" + selection_markdown(result)]
    elif file == "soup.json":
        from benchmarks.perf.soup import markdown as soup_markdown

        body = ["\n" + soup_markdown(result)]
    elif file == "fsdp.json":
        from benchmarks.perf.fsdp_memory import markdown as fsdp_markdown

        body = ["\n" + fsdp_markdown(result)]
    elif file == "build.json":
        from benchmarks.quality.report import build_markdown

        body = ["\n" + build_markdown(result, header=False)]
    else:
        body = ["\n" + kernels_markdown(result)]
    # The anchor lets README's claims table (and anyone) link to this run's section: BENCHMARKS.md#<folder name>.
    parts = [f'<a id="{name}"></a>\n', provenance(result["machine"], result.get("claims_judged_at")) + "\n", *body,
             "\n", *_figures(folder, rel, pngs)]
    text = "".join(parts)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


# --- the document ------------------------------------------------------------------------------


def _claims_by_scale(results_dir: str) -> str:
    from benchmarks import claims_table

    return claims_table.by_scale_markdown(results_dir)


#: Sections built from all the result folders together: name -> the body given the results folder.
DERIVED = {"claims-by-scale": _claims_by_scale}


def regenerate(document: str, results_dir: str = common.RESULTS_DIR) -> tuple[str, list[str]]:
    """``document`` with every generated section rewritten; and the sections that changed, in order.

    A result folder with no section in the document counts as changed (it is missing), and so does a section
    whose folder has no result file.
    """
    folders = result_folders(results_dir)
    changed: list[str] = []
    seen = set()

    def replace(match: re.Match) -> str:
        name = match.group("name")
        seen.add(name)
        if name in DERIVED:  # a section drawn from every result folder, not from one
            body = DERIVED[name](results_dir)
            if body != match.group("body"):
                changed.append(name)
            return f"{BEGIN.format(name=name)}\n{body}{END.format(name=name)}"
        if name not in folders:
            changed.append(f"{name} (no result file in benchmarks/results/{name}/)")
            return match.group(0)
        body = section(name, folders[name])
        if body != match.group("body"):
            changed.append(name)
        return f"{BEGIN.format(name=name)}\n{body}{END.format(name=name)}"

    text = SECTION.sub(replace, document)
    changed += [f"{name} (result folder has no section: add the markers to BENCHMARKS.md)"
                for name in folders if name not in seen]
    return text, changed


def regenerate_claims(readme: str, results_dir: str = common.RESULTS_DIR) -> tuple[str, list[str]]:
    """``readme`` with its claims table (:mod:`benchmarks.claims_table`) rewritten; ``["claims"]`` if it changed.
    A README without the markers counts as changed."""
    from benchmarks import claims_table

    body = claims_table.markdown(results_dir)
    begin, end = BEGIN.format(name=claims_table.NAME), END.format(name=claims_table.NAME)
    match = next((m for m in SECTION.finditer(readme) if m.group("name") == claims_table.NAME), None)
    if match is None:
        return readme, [f"{claims_table.NAME} (README.md has no claims section: add the markers)"]
    if match.group("body") == body:
        return readme, []
    return readme[:match.start()] + f"{begin}\n{body}{end}" + readme[match.end():], [claims_table.NAME]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming the first section that differs from its result file")
    parser.add_argument("--document", default=DOCUMENT, help="the markdown file (default BENCHMARKS.md)")
    parser.add_argument("--results", default=common.RESULTS_DIR, help="the results folder (default benchmarks/results)")
    parser.add_argument("--readme", help="the markdown file holding the claims table (default README.md, unless "
                                         "--document names another file)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw every result folder's figures from its JSON first (no re-run), then regenerate")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.replot and args.check:
        parser.error("--replot writes figures; --check changes nothing: run them one after the other")
    if args.replot:
        for name, path in result_folders(args.results).items():
            drawn = figures.replot(path)
            if drawn:
                print(f"{name}: redrew {', '.join(drawn)}")
    readme = args.readme or (README if os.path.abspath(args.document) == DOCUMENT else None)
    status = 0
    for path, rewrite in ((args.document, regenerate), (readme, regenerate_claims)):
        if path is None:
            continue
        with open(path) as handle:
            document = handle.read()
        text, changed = rewrite(document, args.results)
        if args.check:
            if changed:
                print(f"{path}: generated section {changed[0]} differs from its result file "
                      f"({len(changed)} section(s) in all); run `python -m benchmarks.report` and commit the result.",
                      file=sys.stderr)
                status = 1
            else:
                print(f"{path}: every generated section matches benchmarks/results/.")
            continue
        if text != document:
            common.write_text(path, text)
        print(f"{path}: regenerated {len(changed)} section(s)" + (f": {', '.join(changed)}" if changed else ""))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
