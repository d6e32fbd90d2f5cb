"""Probing and pruning analysis of a fine-tune: did fine-tuning change a pre-trained capability, or wrap it?

Jain et al., "Mechanistically analyzing the effects of fine-tuning on procedurally defined tasks"
(arXiv:2311.12786). Given a base model, its fine-tune and texts labelled with a property of the *pre-training* task:

1. **Probes** (:mod:`.probing`): per-layer linear-probe accuracy for the property, base vs fine-tuned. A property
   still decodable after fine-tuning was not erased, whatever the fine-tune's outputs suggest.
2. **Pruning the wrapper** (:mod:`.wrapper_units`): the MLP units fine-tuning changed most are pruned, ``n`` at a
   time for each requested ``n``, and the probes and the behaviour on the texts (:mod:`.behaviour`: token loss and
   KL to the base) are measured again. A few units that bring the base behaviour back = a thin wrapper.
3. **Reverse fine-tuning** (:mod:`.reverse_ft`, optional): steps on the texts needed to recover the base's loss from
   the fine-tune vs from a freshly initialised control.

Everything only reads the two models: pruning is undone on exit and reverse fine-tuning trains copies. The report
is JSON plus a PNG (probe accuracy per layer for each model; loss/KL vs units pruned; the reverse runs' curves),
written atomically. Models are causal LMs (``AutoModelForCausalLM``): the behaviour is their next-token distribution.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ftplugins.errors import FtpluginsError


@dataclass
class ProbePruneReport:
    """``probes``: variant -> per-layer accuracy (index 0 = embeddings); ``behaviour``: variant -> loss / KL to the
    base; variants are ``base``, ``tuned`` and ``pruned_<n>``. ``wrapper``: the top units, largest change first."""

    labels: list[str]
    layers: int
    probes: dict[str, list[float]] = field(default_factory=dict)
    behaviour: dict[str, dict[str, float]] = field(default_factory=dict)
    wrapper: list[dict] = field(default_factory=list)
    pruning: dict[str, Any] = field(default_factory=dict)
    reverse: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"labels": self.labels, "layers": self.layers,
                "probes": {k: [round(a, 6) for a in v] for k, v in self.probes.items()},
                "behaviour": {k: {m: round(x, 8) for m, x in v.items()} for k, v in self.behaviour.items()},
                "pruning": self.pruning, "wrapper": self.wrapper, "reverse": self.reverse}


def encode_labels(labels: Sequence[Any]) -> tuple[list[str], Any]:
    """Labels (any hashable values) -> (sorted names, int tensor)."""
    import torch

    names = sorted({str(label) for label in labels})
    if len(names) < 2:
        raise FtpluginsError(f"probe-prune: every text has the label {names[0] if names else None!r}; a probe needs "
                             "at least two labels (the pre-training task's property, e.g. a class per text)")
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[str(label)] for label in labels])


def analyze(base: Any, tuned: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[Any], *,
            units: Sequence[int] = (1, 4, 16), mode: str = "zero", reverse_steps: int = 0,
            reverse_learning_rate: float = 1e-3, reverse_tolerance: float = 0.1, backend: str = "auto",
            test_fraction: float = 0.3, seed: int = 0, batch_size: int = 16) -> ProbePruneReport:
    """Run the three parts on ``texts`` (labelled by ``labels``); see the module docstring."""
    from . import behaviour, probing, reverse_ft, wrapper_units

    if len(texts) != len(labels):
        raise FtpluginsError(f"probe-prune: {len(texts)} texts but {len(labels)} labels; give one label per text")
    if any(n < 0 for n in units):
        raise FtpluginsError(f"probe-prune: units {list(units)}; expected counts >= 0 of MLP units to prune")
    names, y = encode_labels(labels)
    train, test = probing.split_indices(len(texts), test_fraction, seed)
    held_out = [texts[i] for i in test.tolist()]

    def measure(variant: str, model: Any) -> None:
        features = probing.layer_features(model, tokenizer, texts, batch_size)
        report.probes[variant] = [probing.probe_accuracy(f, y, train, test, backend, seed) for f in features]
        report.behaviour[variant] = {"loss": behaviour.lm_loss(model, tokenizer, held_out, batch_size),
                                     "kl_to_base": behaviour.kl_to_base(model, base, tokenizer, held_out, batch_size)}

    ranked = wrapper_units.rank_units(base, tuned)
    counts = sorted(set(units))
    if counts and counts[-1] > len(ranked):
        raise FtpluginsError(f"probe-prune: units {counts[-1]} but the model has {len(ranked)} MLP units; ask for "
                             "fewer")
    report = ProbePruneReport(names, 0)
    measure("base", base)
    measure("tuned", tuned)
    report.layers = len(report.probes["base"]) - 1
    total = sum(u.score ** 2 for u in ranked) ** 0.5
    report.wrapper = [u.as_json() for u in ranked[:max(counts, default=0)]]
    report.pruning = {"mode": mode, "units": counts, "total_change": round(total, 8), "change_share": {}}
    for n in counts:
        chosen = ranked[:n]
        share = (sum(u.score ** 2 for u in chosen) ** 0.5 / total) if total > 0 else 0.0
        report.pruning["change_share"][str(n)] = round(share, 6)
        with wrapper_units.pruned(tuned, chosen, mode, base):
            measure(f"pruned_{n}", tuned)
    if reverse_steps:
        train_texts = [texts[i] for i in train.tolist()]
        threshold = reverse_ft.recovery_threshold(report.behaviour["base"]["loss"], report.behaviour["tuned"]["loss"],
                                                  reverse_tolerance)
        common = dict(steps=reverse_steps, threshold=threshold, learning_rate=reverse_learning_rate, seed=seed)
        report.reverse = {
            "steps": reverse_steps, "learning_rate": reverse_learning_rate, "threshold_loss": round(threshold, 6),
            "tuned": reverse_ft.reverse_finetune(tuned, tokenizer, train_texts, held_out, **common).as_json(),
            "control": reverse_ft.reverse_finetune(reverse_ft.control_model(tuned, seed), tokenizer, train_texts,
                                                   held_out, **common).as_json()}
    return report


# --- from folders (the command) ---------------------------------------------------------------------------------


def load_pair(base: str, tuned: str) -> tuple[Any, Any, Any]:
    """(base model, tuned model, tokenizer) from a base folder and a model folder or a PEFT adapter folder (merged in
    memory, so the units' weights are the adapted ones)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path, what in ((base, "base model"), (tuned, "tuned model")):
        if not os.path.isdir(path):
            raise FtpluginsError(f"probe-prune: {what} {path!r} is not a folder; pass a save_pretrained folder")
    base_model = AutoModelForCausalLM.from_pretrained(base)
    if os.path.isfile(os.path.join(tuned, "adapter_config.json")):
        from ftplugins.peft_types import load_adapter

        tuned_model = load_adapter(AutoModelForCausalLM.from_pretrained(base), tuned).merge_and_unload()
    else:
        tuned_model = AutoModelForCausalLM.from_pretrained(tuned)
    tokenizer = AutoTokenizer.from_pretrained(tuned if os.path.isfile(os.path.join(tuned, "tokenizer_config.json"))
                                              else base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return base_model, tuned_model, tokenizer


def load_texts(source: Any, text_field: str = "text", label_field: str = "label") -> tuple[list[str], list[Any]]:
    from ftplugins.eval.rows import load_rows

    rows = load_rows(source, [text_field, label_field], what="probe-prune")
    return [str(row[text_field]) for row in rows], [row[label_field] for row in rows]


# --- the report -------------------------------------------------------------------------------------------------


def write_report(report: ProbePruneReport, output: str) -> list[str]:
    """Write ``output`` (JSON) and, when matplotlib is importable, the PNG beside it; returns the files written."""
    from ftplugins.atomic import staged_dir

    folder = os.path.dirname(os.path.abspath(output))
    stem = os.path.splitext(os.path.basename(output))[0]
    written = [os.path.join(folder, stem + ".json")]
    with staged_dir(folder) as tmp:
        with open(os.path.join(tmp, stem + ".json"), "w") as handle:
            json.dump(report.as_json(), handle, indent=2)
        if _plot(report, os.path.join(tmp, stem + ".png")):
            written.append(os.path.join(folder, stem + ".png"))
    return written


def _plot(report: ProbePruneReport, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = 3 if report.reverse else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    for variant, accuracies in report.probes.items():
        axes[0].plot(range(len(accuracies)), accuracies, marker="o", label=variant)
    axes[0].set(xlabel="layer (0 = embeddings)", ylabel="probe accuracy", title="linear probes per layer")
    axes[0].legend(fontsize=7)
    counts = [0] + [n for n in report.pruning.get("units", []) if n]
    names = ["tuned" if n == 0 else f"pruned_{n}" for n in counts]
    axes[1].plot(counts, [report.behaviour[v]["kl_to_base"] for v in names], marker="o", label="KL(base ‖ model)")
    axes[1].plot(counts, [report.behaviour[v]["loss"] for v in names], marker="s", label="loss")
    axes[1].axhline(report.behaviour["base"]["loss"], linestyle="--", color="gray", label="base loss")
    axes[1].set(xlabel=f"units pruned ({report.pruning.get('mode')})", title="behaviour vs pruned wrapper units")
    axes[1].legend(fontsize=7)
    if report.reverse:
        for which in ("tuned", "control"):
            axes[2].plot(report.reverse[which]["loss"], label=f"from {which}")
        axes[2].axhline(report.reverse["threshold_loss"], linestyle="--", color="gray", label="recovered")
        axes[2].set(xlabel="reverse fine-tuning step", ylabel="held-out loss", title="reverse fine-tuning")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
