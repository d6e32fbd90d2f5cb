"""Model soups: average the weights of models fine-tuned from one initialisation.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", ICML 2022 (arXiv:2203.05482); reference code mlfoundations/model-soups.

* :func:`uniform` — the elementwise mean of every ingredient.
* :func:`greedy` — ingredients sorted by held-out score (best first, ties in the given order); each is added
  if the soup's held-out score does not drop (``>=``, the paper's Algorithm 1; ``strict=True`` is the
  reference code's ``>``). One pass. The written soup is the exact mean of the chosen ingredients.
* :func:`soup_deltas` — sparse deltas of one base (:mod:`ftplugins.sparse.delta`): their mean is the delta
  of the soup of their models (``W0 + mean(Δ)`` = ``mean(W0 + Δ)``); :func:`greedy_deltas` is their greedy soup.

Ingredients are full models (safetensors, sharded or not) or PEFT adapters of one config (any PEFT or
ftplugins type; for LoRA the A and B matrices are averaged separately, as an adapter soup is). Tensors are
streamed: one tensor of every ingredient at a time (``safe_open``), so uniform soups peak at about one
tensor per ingredient plus the output tensor; the greedy soup also keeps the model it evaluates and one
running sum (fp32), never N models. The output folder gets the first ingredient's config and tokenizer,
written staged (:mod:`ftplugins.atomic`); nothing is written before every check passed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftplugins.errors import FtpluginsError

from .ingredients import Ingredient, open_ingredients

#: Files of a Trainer checkpoint that belong to the run, not to the model (not copied into a soup).
REPORT = "soup.json"
_RUN_FILES = ("soup.json", "optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
              "ftplugins_run.json", "ftplugins_checkpoint.json")  # the last: a checkpoint's seal; a soup is none


@dataclass
class SoupResult:
    """What a soup was made of: ``chosen`` paths (in the order added), every ingredient's own score and the soup's."""

    output: str
    chosen: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    soup_score: float | None = None


def uniform(paths: Sequence[str], output: str, overwrite: bool = False) -> SoupResult:
    """Write the mean of the ingredients at ``paths`` to the folder ``output``."""
    _check_output(output, overwrite, paths)
    ingredients = open_ingredients(paths)
    try:
        write_mean(ingredients, output, report={"method": "uniform", "chosen": list(paths)})
    finally:
        for ingredient in ingredients:
            ingredient.close()
    return SoupResult(output, list(paths))


def greedy(paths: Sequence[str], output: str, evaluate: Callable[[Any], float], base: str | None = None,
           strict: bool = False, overwrite: bool = False, load_model: Callable[[str], Any] | None = None) -> SoupResult:
    """Greedy soup of ``paths`` scored by ``evaluate(model) -> float`` (higher is better), written to ``output``.

    The evaluated model is the first ingredient loaded with ``load_model(path)`` (default:
    ``AutoModelForCausalLM``); for adapters, ``base`` (default: the adapter's ``base_model_name_or_path``)
    with the first adapter loaded on it. Each candidate's tensors are copied into that model in place.
    """
    import torch

    _check_output(output, overwrite, paths)
    ingredients = open_ingredients(paths)
    try:
        model = _evaluation_model(ingredients[0], base, load_model)
        running: dict[str, Any] = {}

        def score_alone(ingredient):
            _load_weights(model, ingredient, ingredient.get)
            return float(evaluate(model))

        def score_with(candidate, n):
            _load_weights(model, candidate, lambda name: (running[name] + candidate.get(name).float()) / (n + 1))
            return float(evaluate(model))

        def accept(ingredient):
            for name in ingredient.files:
                if name in running:
                    running[name] += ingredient.get(name).float()
                else:  # copy=True: safe_open tensors may share a private memory map an in-place add would alter
                    running[name] = ingredient.get(name).to(torch.float32, copy=True)

        chosen, scores, best = select_greedily(ingredients, lambda ing: ing.path, score_alone, score_with, accept,
                                               strict)
        del running, model
        write_mean(chosen, output, report={"method": "greedy", "strict": strict, "chosen": [c.path for c in chosen],
                                           "scores": scores, "soup_score": best})
    finally:
        for ingredient in ingredients:
            ingredient.close()
    return SoupResult(output, [c.path for c in chosen], scores, best)


def select_greedily(items: Sequence[Any], key: Callable[[Any], str], score_alone: Callable[[Any], float],
                    score_with: Callable[[Any, int], float], accept: Callable[[Any], None],
                    strict: bool) -> tuple[list[Any], dict[str, float], float]:
    """The greedy-soup recipe (model-soups main.py, one pass): score each item alone, sort best first (ties
    keep the given order), start from the best, then add each next item whose soup of ``n + 1`` scores at least
    as well (``strict``: better). ``score_with(item, n)`` scores the current soup of ``n`` plus ``item``;
    ``accept(item)`` adds it to the running soup. Returns (chosen items, score of each, final soup score)."""
    scores = {key(item): score_alone(item) for item in items}
    ranked = sorted(items, key=lambda item: -scores[key(item)])
    chosen, best = [ranked[0]], scores[key(ranked[0])]
    accept(ranked[0])
    for candidate in ranked[1:]:
        score = score_with(candidate, len(chosen))
        if score > best or (score == best and not strict):
            chosen.append(candidate)
            best = score
            accept(candidate)
    return chosen, scores, best


def greedy_deltas(paths: Sequence[str], base: str, output: str, evaluate: Callable[[Any], float],
                  strict: bool = False, overwrite: bool = False,
                  load_model: Callable[[str], Any] | None = None) -> SoupResult:
    """Greedy soup of sparse deltas of ``base``: each candidate model is ``base + mean(chosen deltas)``, set in
    place on one loaded base model (only the tensors the deltas change are kept aside to reset it). Writes the
    mean of the chosen deltas to the file ``output`` (:func:`soup_deltas`)."""
    import torch

    from ftplugins.sparse.delta import apply_delta, compose_deltas, load_delta

    if os.path.exists(output) and not overwrite:
        raise FtpluginsError(f"output {output!r} exists; choose a new file name, or pass --overwrite")
    if not paths:
        raise FtpluginsError("a soup needs at least one ingredient; pass sparse delta files")
    deltas = {path: load_delta(path) for path in paths}
    model = load_model(base) if load_model is not None else _auto_model(base)
    params = model.state_dict(keep_vars=True)
    names = sorted({name for delta in deltas.values() for name in delta.tensors})
    missing = [name for name in names if name not in params]
    if missing:
        raise FtpluginsError(f"the deltas change {missing[:3]}, which the base model {base!r} does not have; pass "
                             "the base they were made from")
    original = {name: params[name].detach().clone() for name in names}
    running: list[Any] = []

    def score_mean(chosen):
        with torch.no_grad():
            for name in names:
                params[name].data.copy_(original[name])
            mean = compose_deltas(chosen).scaled(1.0 / len(chosen))
            apply_delta({name: params[name].data for name in mean.tensors}, mean, check_base=False)
        return float(evaluate(model))

    chosen, scores, best = select_greedily(
        list(paths), str, lambda path: score_mean([deltas[path]]),
        lambda path, n: score_mean([*running, deltas[path]]), lambda path: running.append(deltas[path]), strict)
    soup_deltas(chosen, output, overwrite=overwrite)
    return SoupResult(output, chosen, scores, best)


def soup_deltas(paths: Sequence[str], output: str, overwrite: bool = False) -> str:
    """Write the mean of the sparse deltas at ``paths`` (one base) to the file ``output``."""
    from ftplugins.sparse.delta import compose_deltas, load_delta, save_delta

    if not paths:
        raise FtpluginsError("a soup needs at least one ingredient; pass sparse delta files")
    if os.path.exists(output) and not overwrite:
        raise FtpluginsError(f"output {output!r} exists; choose a new file name, or pass --overwrite")
    deltas = [load_delta(p) for p in paths]
    shapes = {}
    for path, delta in zip(paths, deltas):
        for name, entry in delta.tensors.items():
            if shapes.setdefault(name, (entry.shape, path))[0] != entry.shape:
                raise FtpluginsError(f"deltas {shapes[name][1]!r} and {path!r}: tensor {name} has shape "
                                     f"{shapes[name][0]} vs {entry.shape}; soup deltas of one base model")
    # Deltas store fp64 differences, so summing then scaling once keeps the mean to one rounding.
    mean = compose_deltas(deltas).scaled(1.0 / len(deltas))
    mean.metadata["soup_of"] = str(len(deltas))
    save_delta(mean, output)
    return output


# --- pieces ---------------------------------------------------------------------------------------


def write_mean(ingredients: Sequence[Ingredient], output: str, report: dict | None = None) -> None:
    """Stream the mean of ``ingredients`` into ``output`` with the first one's shard layout and other files,
    plus ``report`` as ``soup.json`` (what the soup is made of)."""
    import json

    import torch

    from ftplugins.atomic import clean_staging, staged_dir
    from ftplugins.output_lock import lock_output_dir
    from ftplugins.safetensors_stream import write_streamed

    first = ingredients[0]
    with lock_output_dir(output, "ftplugins soup"):
        clean_staging(output)
        with staged_dir(output, replace=True) as tmp:  # replace: no stale shards of an earlier soup
            for shard in first.shards:
                names = [n for n, f in first.files.items() if f == shard]
                layout = []
                for name in names:
                    sliced = first.handle(shard).get_slice(name)
                    layout.append((name, _torch_dtype(sliced.get_dtype()), tuple(sliced.get_shape())))

                def tensors(names=names):
                    for name in names:
                        tensor = first.get(name)
                        if not tensor.is_floating_point():  # integer buffers (position ids): the first's
                            yield tensor
                            continue
                        total = tensor.to(torch.float64, copy=True)  # never add into a mapped tensor
                        for other in ingredients[1:]:
                            total += other.get(name).to(torch.float64)
                        yield (total / len(ingredients)).to(tensor.dtype)

                target = os.path.join(tmp, shard)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                write_streamed(target, layout, tensors(), metadata=first.handle(shard).metadata() or {"format": "pt"})
            _copy_other_files(first.path, tmp)
            if report is not None:
                with open(os.path.join(tmp, REPORT), "w") as handle:
                    json.dump(report, handle, indent=2)


def _torch_dtype(name: str):
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}[name]


def _copy_other_files(source: str, destination: str) -> None:
    """The config, tokenizer, shard index, adapter config: everything but weights and run state."""
    for name in sorted(os.listdir(source)):
        full = os.path.join(source, name)
        if (not os.path.isfile(full) or name.endswith(".safetensors") or name.startswith((".ftplugins", "rng_state"))
                or name in _RUN_FILES):
            continue
        shutil.copy2(full, os.path.join(destination, name))


def _check_output(output: str, overwrite: bool, paths: Sequence[str]) -> None:
    if os.path.isfile(output):
        raise FtpluginsError(f"output {output!r} is a file; expected a folder for the soup (a new or empty one)")
    if any(os.path.abspath(output) == os.path.abspath(p) for p in paths):
        raise FtpluginsError(f"output {output!r} is one of the ingredients; write the soup to a new folder")
    if os.path.isdir(output) and not overwrite:
        held = [n for n in os.listdir(output) if not n.startswith(".ftplugins")]
        if held:
            raise FtpluginsError(f"output folder {output!r} is not empty (e.g. {sorted(held)[0]}); choose a new "
                                 "folder, or pass --overwrite")


def _evaluation_model(first: Ingredient, base: str | None, load_model: Callable[[str], Any] | None):
    if first.kind == "model":
        return load_model(first.path) if load_model is not None else _auto_model(first.path)
    base = base or first.config.get("base_model_name_or_path")
    if not base:
        raise FtpluginsError(f"adapter {first.path!r} records no base model; pass base=... (--base) to score it")
    model = load_model(base) if load_model is not None else _auto_model(base)
    from ftplugins.peft_types import load_adapter

    return load_adapter(model, first.path)


def _auto_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def _load_weights(model: Any, ingredient: Ingredient, tensor_of: Callable[[str], Any]) -> None:
    """Copy ``tensor_of(name)`` for every tensor of ``ingredient`` into ``model`` (in place)."""
    import torch

    if ingredient.kind == "adapter":
        from peft import set_peft_model_state_dict

        state = {name: tensor_of(name).to(ingredient.get(name).dtype) for name in ingredient.files}
        result = set_peft_model_state_dict(model, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise FtpluginsError(f"adapter {ingredient.path!r} holds tensors the model has no place for: "
                                 f"{unexpected[:3]}")
        return
    params = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in ingredient.files:
            if name not in params:
                raise FtpluginsError(f"{ingredient.path!r} holds {name}, which the evaluated model does not have; "
                                     "pass a load_model that builds the ingredients' architecture")
            params[name].data.copy_(tensor_of(name))
