"""Knowledge infusion in the FineTuneBench format: did fine-tuning on new facts teach them, or only their wording?

FineTuneBench (Wu et al., 2024; kevinwu23/StanfordFineTuneBench) fine-tunes on question/answer pairs about new
facts ("memorization" questions) and then asks the same facts in other forms. Format: CSV files with ``id``,
``prompt`` (the question) and ``answer``, one file per question kind, or one CSV with a ``kind`` column. Kinds:

* ``memorization`` -- the training questions themselves (did the facts go in at all?);
* ``rephrased`` -- the same question in other words;
* ``date_shifted`` -- the same fact asked with its date expressed differently ("two years after 2029");
* ``secondary`` -- a fact that follows from the new one (the inverse question, a derived attribute);
* ``comparison`` -- a question that needs two facts at once.

Any other kind name is reported as it is. Evaluation: greedy decoding of ``template`` (``{prompt}`` replaced),
the first line of the answer judged against the gold answer with s3ft's judges (:mod:`ftplugins.eval.judges`):
``auto`` (default) is ``numeric`` where the gold answer is a number and ``normalized`` (FineTuneBench's exact
match after lower-casing; punctuation and spacing ignored too) elsewhere; or ``normalized``, ``numeric``,
``exact``, ``pkg.mod:func``. Reports accuracy per kind and over all rows.

* Python: :func:`load_facts`, :func:`training_rows` (the memorization questions as prompt/completion rows to
  fine-tune on), :func:`evaluate_infusion`.
* CLI: ``ftplugins eval infusion --model DIR --data facts.csv`` (``--data KIND=FILE.csv`` per kind), and
  ``ftplugins eval infusion-train OUT.jsonl`` to write the training rows for a TRL recipe.
* Plugin ``infusion_eval``: evaluates after training; metrics into the Trainer's log.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ftplugins.errors import FtpluginsError

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "finetunebench_tiny.csv")
KINDS = ("memorization", "rephrased", "date_shifted", "secondary", "comparison")
ALIASES = {"memorisation": "memorization", "original": "memorization", "rephrase": "rephrased",
           "date": "date_shifted", "date_changed": "date_shifted", "date-shifted": "date_shifted"}
TEMPLATE = "Question: {prompt}\nAnswer:"
WHAT = "infusion"


def load_facts(sources: Any) -> list[dict]:
    """Rows ``{id, kind, prompt, answer}`` from one source or a list of them.

    A source is a CSV / JSONL path or a list of dicts with ``prompt``, ``answer`` and ``kind`` columns, or
    ``"KIND=PATH"`` for a FineTuneBench file of one kind (``id, prompt, answer``)."""
    from .rows import load_rows

    sources = [sources] if isinstance(sources, (str, os.PathLike)) or not _is_list_of_sources(sources) else sources
    facts: list[dict] = []
    for source in sources:
        kind = None
        if isinstance(source, str) and "=" in source and not os.path.exists(source):
            kind, source = source.split("=", 1)
        required = ("prompt", "answer") if kind else ("prompt", "answer", "kind")
        for index, row in enumerate(load_rows(source, required, what=WHAT)):
            name = str(kind or row["kind"]).strip().lower().replace(" ", "_")
            facts.append({"id": row.get("id", f"{len(facts)}"), "kind": ALIASES.get(name, name),
                          "prompt": str(row["prompt"]), "answer": str(row["answer"])})
    return facts


def _is_list_of_sources(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, (str, os.PathLike)) for v in value)


def training_rows(facts: Sequence[dict], kinds: Sequence[str] = ("memorization",),
                  template: str = TEMPLATE) -> list[dict]:
    """The rows to fine-tune on: ``{"prompt", "completion"}`` of the given kinds (FineTuneBench trains on the
    memorization questions), in the prompt format :func:`evaluate_infusion` asks them."""
    rows = [{"prompt": template.replace("{prompt}", f["prompt"]), "completion": " " + f["answer"]}
            for f in facts if f["kind"] in kinds]
    if not rows:
        present = sorted({f["kind"] for f in facts})
        raise FtpluginsError(f"{WHAT}: no rows of kind(s) {', '.join(kinds)} to train on (kinds present: "
                             f"{', '.join(present)}).")
    return rows


def auto_judge(prediction: str, gold: str) -> bool:
    """``numeric`` for a gold answer that is a number, ``normalized`` otherwise."""
    from .judges import normalized_match, numeric_match

    try:
        float(gold.replace(",", "").strip())
    except ValueError:
        return normalized_match(prediction, gold)
    return numeric_match(prediction, gold)


def resolve(judge: Any, option: str = "infusion judge") -> Any:
    from .judges import resolve_judge

    return resolve_judge(auto_judge if judge == "auto" else judge, option=option)


def evaluate_infusion(model: Any, tokenizer: Any, data: Any = TINY, *, judge: Any = "auto",
                      template: str = TEMPLATE, max_new_tokens: int = 32, batch_size: int = 16) -> dict:
    """Greedy answers to every question, judged: ``{"metrics": {"accuracy/<kind>": ..., "accuracy": ...},
    "counts": {kind: n}, "questions": [...]}``."""
    from .generation import generate_texts
    facts = data if _is_fact_rows(data) else load_facts(data)
    judge_fn = resolve(judge)
    prompts = [template.replace("{prompt}", f["prompt"]) for f in facts]
    answers = [texts[0] for texts in generate_texts(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size, stop=("\n",))]
    questions = [{**f, "response": a.strip(), "correct": judge_fn(a.strip(), f["answer"], f)}
                 for f, a in zip(facts, answers)]
    return {**accuracy_by_kind(questions),
            "config": {"judge": judge if isinstance(judge, str) else getattr(judge, "__name__", "callable"),
                       "template": template, "max_new_tokens": max_new_tokens},
            "questions": questions}


def _is_fact_rows(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and {"kind", "prompt", "answer"} <= \
        set(data[0])


def accuracy_by_kind(questions: Sequence[dict]) -> dict:
    """Accuracy per kind (the known kinds first, in FineTuneBench's order) and over every question."""
    kinds = [k for k in KINDS if any(q["kind"] == k for q in questions)]
    kinds += sorted({q["kind"] for q in questions} - set(kinds))
    metrics, counts = {}, {}
    for kind in kinds:
        marks = [bool(q["correct"]) for q in questions if q["kind"] == kind]
        metrics[f"accuracy/{kind}"] = sum(marks) / len(marks)
        counts[kind] = len(marks)
    metrics["accuracy"] = sum(bool(q["correct"]) for q in questions) / len(questions)
    return {"metrics": metrics, "counts": counts}
