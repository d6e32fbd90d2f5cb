"""Intruder dimensions: singular vectors of a fine-tuned matrix that no pre-trained singular vector resembles.

Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv:2410.21228); reference
code reeceshuttle/intruder-dimensions (find_intruder_dimensions.py). Per weight matrix: thin fp32 SVDs of
the pre-trained ``W0`` and the fine-tuned ``W``; ``C = |U_ftᵀ U_0|`` (absolute cosines, so sign flips of
singular vectors do not matter); fine-tuned vector ``j`` among the top ``k`` (by singular value) is an
intruder iff ``max_i C[j, i] < ε``, the max over *every* pre-trained left singular vector. Defaults as in
the reference: ``k = 10``, ``ε = 0.5`` (the paper sweeps ε, so several may be given).

Sources of the (W0, W) pairs, one matrix in memory at a time beyond what they need:

* two model folders (:func:`model_pair`): tensors streamed with ``safe_open``;
* a base model folder + a PEFT adapter of any type that merges (:func:`adapter_pair`): the base is loaded,
  and each adapted layer is merged in memory, read, and restored bit for bit, one layer at a time;
* a base model folder + a sparse delta (:func:`delta_pair`): ``W0 + Δ`` per changed matrix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftplugins.errors import FtpluginsError

K, EPSILONS = 10, (0.5,)
#: Matrices analysed by default: 2-D weights other than the embeddings and the output head (as the paper).
DEFAULT_EXCLUDE = r"(embed|lm_head|wte|wpe|word_embeddings|position_embeddings|shared)"


@dataclass
class MatrixResult:
    """Intruder count of one matrix per ε, the intruders' indices among the top-k (at the first ε), and the
    largest cosine of each top-k fine-tuned vector with any pre-trained one."""

    name: str
    counts: dict[float, int]
    intruders: list[int]
    max_similarity: list[float]
    layer: int | None = None
    kind: str = ""

    def as_json(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "counts": {str(e): n for e, n in self.counts.items()},
                "intruders": self.intruders, "max_similarity": [round(s, 6) for s in self.max_similarity]}


@dataclass
class IntruderReport:
    k: int
    epsilons: list[float]
    matrices: list[MatrixResult] = field(default_factory=list)

    def total(self, epsilon: float) -> int:
        return sum(m.counts[epsilon] for m in self.matrices)

    def by(self, key: str, epsilon: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.matrices:
            group = str(getattr(m, key))
            out[group] = out.get(group, 0) + m.counts[epsilon]
        return out

    def as_json(self) -> dict:
        return {
            "k": self.k, "epsilons": self.epsilons,
            "total": {str(e): self.total(e) for e in self.epsilons},
            "per_layer": {str(e): self.by("layer", e) for e in self.epsilons},
            "per_kind": {str(e): self.by("kind", e) for e in self.epsilons},
            "matrices": {m.name: m.as_json() for m in self.matrices},
        }


# --- one matrix -----------------------------------------------------------------------------------


def similarity(w0, w, k: int = K):
    """``|U_ftᵀ U_0|`` for the top-``k`` fine-tuned left singular vectors (rows) against all pre-trained ones."""
    import torch

    if tuple(w0.shape) != tuple(w.shape) or w0.dim() != 2:
        raise FtpluginsError(f"intruder dimensions compare two matrices of one shape, got {tuple(w0.shape)} and "
                             f"{tuple(w.shape)}")
    device = w.device  # the fine-tuned matrix's device: a GPU during training (the callback)
    u0 = torch.linalg.svd(w0.detach().to(device, torch.float32), full_matrices=False).U
    u = torch.linalg.svd(w.detach().to(device, torch.float32), full_matrices=False).U[:, :k]
    return (u.T @ u0).abs().cpu()


def matrix_intruders(name: str, w0, w, k: int = K, epsilons: Sequence[float] = EPSILONS) -> MatrixResult:
    """Count the intruder dimensions of ``w`` (fine-tuned) against ``w0`` (pre-trained)."""
    best = similarity(w0, w, k).max(dim=1).values
    counts = {float(e): int((best < e).sum()) for e in epsilons}
    intruders = [int(j) for j in (best < epsilons[0]).nonzero().flatten()]
    layer, kind = layer_and_kind(name)
    return MatrixResult(name, counts, intruders, [float(s) for s in best], layer, kind)


def layer_and_kind(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> (3, ``self_attn.q_proj``)."""
    found = re.search(r"\.(\d+)\.", name)
    stem = name[:-len(".weight")] if name.endswith(".weight") else name
    if not found:
        return None, stem
    return int(found.group(1)), stem[found.end():]


def analyze(pairs: Iterable[tuple[str, Any, Any]], k: int = K, epsilons: Sequence[float] = EPSILONS) -> IntruderReport:
    """Intruder counts of every ``(name, W0, W)`` pair."""
    _check_settings(k, epsilons)
    report = IntruderReport(k, [float(e) for e in epsilons])
    for name, w0, w in pairs:
        report.matrices.append(matrix_intruders(name, w0, w, k, epsilons))
    if not report.matrices:
        raise FtpluginsError("no weight matrix to analyse: the tuned model changes none of the selected matrices "
                             "(check --include, or that the adapter / delta targets 2-D weights)")
    return report


def _check_settings(k: int, epsilons: Sequence[float]) -> None:
    if k < 1:
        raise FtpluginsError(f"k={k}: the number of top fine-tuned singular vectors must be at least 1 (default 10)")
    if not epsilons or any(not 0 < e <= 1 for e in epsilons):
        raise FtpluginsError(f"epsilon {list(epsilons)}: each threshold must be a cosine in (0, 1] (default 0.5)")


# --- where the matrices come from ----------------------------------------------------------------


def selected(name: str, shape: Sequence[int], include: str | None) -> bool:
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    if include is not None:
        return re.search(include, name) is not None
    return re.search(DEFAULT_EXCLUDE, name) is None


def model_pair(base: str, tuned: str, include: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """(name, W0, W) for every selected matrix of two model folders, one pair of tensors at a time."""
    from .ingredients import Ingredient

    first, second = Ingredient(base), Ingredient(tuned)
    if first.kind != "model" or second.kind != "model":
        raise FtpluginsError(f"model_pair expects two model folders; {tuned!r} is an adapter: use adapter_pair")
    try:
        for name in first.files:
            if name not in second.files:
                continue
            dtype, shape = first.spec(name)
            if not selected(name, shape, include) or dtype not in ("F32", "F16", "BF16", "F64"):
                continue
            if second.spec(name)[1] != shape:
                raise FtpluginsError(f"{name} has shape {shape} in {base!r} but {second.spec(name)[1]} in "
                                     f"{tuned!r}; compare a fine-tune with the model it was trained from")
            yield name, first.get(name), second.get(name)
    finally:
        first.close()
        second.close()


def delta_pair(base: str, delta_path: str, include: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """(name, W0, W0 + Δ) for every selected matrix a sparse delta changes."""
    from ftplugins.sparse.delta import SparseDelta, apply_delta, load_delta

    from .ingredients import Ingredient

    delta = load_delta(delta_path)
    model = Ingredient(base)
    try:
        for name, entry in delta.tensors.items():
            if name not in model.files:
                raise FtpluginsError(f"the delta {delta_path!r} changes {name}, which {base!r} does not have; pass "
                                     "the base model the delta was made from")
            if not selected(name, entry.shape, include):
                continue
            w0 = model.get(name)
            changed = {name: w0.clone()}
            apply_delta(changed, SparseDelta({name: entry}, delta.metadata), check_base=False)
            yield name, w0, changed[name]
    finally:
        model.close()


def adapter_pair(model: Any, include: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """(name, W0, merged W) for every adapted layer of a ``PeftModel``, merging one layer at a time.

    The layer's base weight is restored bit for bit afterwards (unmerge, then the saved copy), so the model
    can go on training (the ``intruders`` callback uses this too).
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix = "base_model.model."
    for module_name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        name = (module_name[len(prefix):] if module_name.startswith(prefix) else module_name) + ".weight"
        if weight is None or not selected(name, weight.shape, include) or module.merged:
            continue
        with torch.no_grad():
            w0 = weight.detach().clone()
            try:
                module.merge()
            except (NotImplementedError, ValueError) as exc:
                raise FtpluginsError(f"{type(module).__name__} at {module_name} cannot merge its adapter into the "
                                     f"weight ({exc}); intruder dimensions need the merged matrix") from exc
            merged = weight.detach().clone()
            module.unmerge()
            weight.copy_(w0)
        yield name, w0, merged


def load_adapter_model(base: str, adapter: str):
    from transformers import AutoModelForCausalLM

    from ftplugins.peft_types import load_adapter

    return load_adapter(AutoModelForCausalLM.from_pretrained(base), adapter)


def pairs_for(base: str, tuned: str, include: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """Pick the source from ``tuned``: an adapter folder, a sparse delta file, or a model folder."""
    if not os.path.isdir(base):
        raise FtpluginsError(f"base model {base!r} is not a folder; pass the pre-trained model's save_pretrained "
                             "folder")
    if os.path.isfile(tuned):
        return delta_pair(base, tuned, include)
    if os.path.isfile(os.path.join(tuned, "adapter_config.json")):
        return adapter_pair(load_adapter_model(base, tuned), include)
    if os.path.isdir(tuned):
        return model_pair(base, tuned, include)
    raise FtpluginsError(f"tuned model {tuned!r} does not exist; pass a model folder, an adapter folder or a sparse "
                         "delta file")


# --- writing the report ---------------------------------------------------------------------------


def write_report(report: IntruderReport, output: str, similarity_of: dict[str, Any] | None = None) -> list[str]:
    """Write ``output`` (JSON) and, when matplotlib is importable, ``output`` with ``.png`` (counts per layer
    and kind; one heat map per matrix in ``similarity_of``). Returns the files written."""
    from ftplugins.atomic import staged_dir

    folder = os.path.dirname(os.path.abspath(output))
    stem = os.path.splitext(os.path.basename(output))[0]
    written = []
    with staged_dir(folder) as tmp:
        with open(os.path.join(tmp, stem + ".json"), "w") as handle:
            json.dump(report.as_json(), handle, indent=2)
        written.append(os.path.join(folder, stem + ".json"))
        if _plot(report, os.path.join(tmp, stem + ".png"), similarity_of or {}):
            written.append(os.path.join(folder, stem + ".png"))
    return written


def _plot(report: IntruderReport, path: str, similarity_of: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epsilon = report.epsilons[0]
    panels = 1 + len(similarity_of)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    per_kind: dict[str, dict[int, int]] = {}
    for m in report.matrices:
        per_kind.setdefault(m.kind, {})
        layer = -1 if m.layer is None else m.layer
        per_kind[m.kind][layer] = per_kind[m.kind].get(layer, 0) + m.counts[epsilon]
    ax = axes[0][0]
    for kind, counts in sorted(per_kind.items()):
        layers = sorted(counts)
        ax.plot(layers, [counts[i] for i in layers], marker="o", label=kind)
    ax.set(xlabel="layer", ylabel=f"intruder dimensions (k={report.k}, ε={epsilon})", title="intruders per layer")
    ax.legend(fontsize=7)
    for ax, (name, sim) in zip(axes[0][1:], similarity_of.items()):
        image = ax.imshow(sim.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set(xlabel="pre-trained singular vector", ylabel="fine-tuned singular vector", title=name)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
