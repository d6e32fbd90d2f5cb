"""Locating LocFT-BF's module the paper's way: train each candidate on validation edits, keep the best.

The paper does not fix a depth: it derives the tuned module per model from a sweep of tuning locations
(Qwen2.5-7B: ``layers.6.mlp.down_proj``; Llama-3-8B: ``layers.22.mlp.down_proj``; Mistral-7B: all of layer 23),
and the plugin's default is the Llama-3 choice. ``ftplugins locft-locate --config RECIPE -o DIR`` runs that sweep
for your model. Each candidate (default: every decoder layer's ``mlp.down_proj``, then every whole layer) trains the
recipe with ``locft_modules`` set to it on the validation edits (``--edits FILE``, or ``--rows N`` rows of the
recipe's data drawn with ``--seed``), and is scored on those edits by the CounterFact score: the harmonic mean of
edit success, paraphrase success and neighbourhood preservation (:func:`~ftplugins.methods.locft.evaluate_edits`;
the parts the edits carry). The best, ties to the earlier candidate, goes to ``DIR/locate.json`` with every
candidate's scores: train with ``--locft_modules`` set to it. The quality harness's ``editing-located`` scenario
measured this protocol against the mid-depth guess (BENCHMARKS.md).

Each candidate's folder (``DIR/candidates/NN/``) holds its recipe, ``train.log`` and ``result.json``, written last
and atomically: a rerun skips the candidates scored for the same recipe and edits and trains a crashed one again.
A candidate's trained model is deleted once scored (``keep_runs`` keeps it): a sweep of a 7B model would otherwise
keep one copy per candidate.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from ftplugins.errors import FtpluginsError

_DOWN = re.compile(r"(?:.*\.)?layers\.(\d+)\.mlp\.down_proj")
_LAYER = re.compile(r"(?:.*\.)?layers\.(\d+)")


def module_names(model_name_or_path: str) -> list[str]:
    """The model's module names, read from its config on the meta device (no weights are loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_name_or_path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, _ in model.named_modules()]


def check_candidates(candidates: Sequence[str], names: Sequence[str]) -> None:
    """Refuse, before any training, a candidate that is not exactly one of the model's module names."""
    import difflib

    for candidate in candidates:
        if candidate not in names:
            close = difflib.get_close_matches(candidate, names, n=3)
            raise FtpluginsError(f"locft-locate: the model has no module {candidate!r}"
                                 + (f"; closest: {', '.join(close)}" if close else "")
                                 + " (names are matched exactly, as model.named_modules() gives them)")


def candidate_modules(model_name_or_path: str, names: Sequence[str] | None = None) -> list[str]:
    """Every decoder layer's ``mlp.down_proj``, then every whole layer, by depth: the modules the paper swept."""
    names = module_names(model_name_or_path) if names is None else names
    downs = sorted((int(m.group(1)), n) for n in names if (m := _DOWN.fullmatch(n)))
    layers = sorted((int(m.group(1)), n) for n in names if (m := _LAYER.fullmatch(n)))
    if not downs and not layers:
        raise FtpluginsError(f"locft-locate: {model_name_or_path} has no module named like "
                             "'model.layers.N.mlp.down_proj' or 'model.layers.N'; give the candidates with "
                             "--candidates NAME,NAME (exact names from model.named_modules())")
    return [n for _, n in downs] + [n for _, n in layers]


def counterfact_score(scores: dict[str, float | None]) -> float:
    """The harmonic mean of the measured parts (edit, paraphrase, neighbourhood): one failed part sinks it, as in
    ROME's CounterFact score."""
    parts = [v for v in (scores.get("edit_success"), scores.get("paraphrase_success"),
                         scores.get("neighbourhood_preservation")) if v is not None]
    if not parts or min(parts) <= 0:
        return 0.0
    return len(parts) / sum(1 / p for p in parts)


def validation_edits(config: dict, edits: str | None, rows: int | None, seed: int) -> Any:
    """The edits each candidate trains and is scored on: ``edits`` (a .jsonl/.json file), or ``rows`` rows of the
    recipe's train split drawn with ``seed`` (all of them when ``rows`` is None)."""
    from ftplugins.tools.sweep import load_pool

    pool = load_pool(config, edits)
    if rows is not None and rows < len(pool):
        if rows < 1:
            raise FtpluginsError(f"locft-locate: --rows {rows}: give at least one edit")
        pool = pool.shuffle(seed=seed).select(range(rows))
    target = config.get("locft_target_column", "target")
    missing = {"prompt", target} - set(pool.column_names)
    if missing:
        raise FtpluginsError(f"locft-locate: the edits have columns {sorted(pool.column_names)} but need "
                             f"{sorted(missing)} (the prompt and locft_target_column={target!r})")
    return pool


def locate(config_path: str, output: str, *, candidates: Sequence[str] | None = None, edits: str | None = None,
           rows: int | None = None, seed: int = 0, launcher: str | None = None, extra_args: Sequence[str] = (),
           keep_runs: bool = False, overwrite: bool = False, log: Any = print) -> dict:
    """Run (or resume) the sweep into ``output``; returns what ``locate.json`` holds."""
    import yaml

    from ftplugins.atomic import staged_dir
    from ftplugins.config_file import load_config
    from ftplugins.tools.sweep import file_sha, load_trained, point_recipe, pool_sha, prepare_output, train_point

    from . import evaluate_edits

    config = load_config(config_path)
    if "locft" not in (config.get("plugins") or []):
        raise FtpluginsError(f"locft-locate: the recipe {config_path} does not use the locft plugin; add "
                             "'plugins: [locft]' (and its options) to it")
    base = config.get("model_name_or_path")
    names = module_names(base)
    candidates = list(candidates) if candidates else candidate_modules(base, names)
    check_candidates(candidates, names)
    pool = validation_edits(config, edits, rows, seed)
    target, separator = config.get("locft_target_column", "target"), config.get("locft_separator", "auto")
    manifest = {"config": os.path.abspath(config_path), "config_sha": file_sha(config_path), "edits": len(pool),
                "edits_sha": pool_sha(pool), "seed": seed, "candidates": candidates}
    prepare_output(output, manifest, overwrite, name="locate_manifest.json", what="locft-locate",
                   points="candidates")
    data_dir = os.path.join(output, "edits")
    with staged_dir(data_dir) as tmp:  # the same rows whenever the manifest matches
        pool.to_json(os.path.join(tmp, "train.jsonl"))
    runner = shlex.split(launcher) if launcher else [sys.executable]
    results = []
    for index, module in enumerate(candidates):
        folder = os.path.join(output, "candidates", f"{index:02d}")
        done = os.path.join(folder, "result.json")
        if os.path.isfile(done):
            with open(done) as handle:
                result = json.load(handle)
            log(f"{module}: done before (score {result['score']:.4f})")
            results.append(result)
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a crash during this candidate's training: start it over
        run_dir = os.path.join(folder, "run")
        recipe = {**point_recipe(config, data_dir, run_dir), "locft_modules": module}
        with staged_dir(folder) as tmp, open(os.path.join(tmp, "recipe.yaml"), "w") as handle:
            yaml.safe_dump(recipe, handle, sort_keys=False)
        log(f"{module}: training on {len(pool)} edits ...")
        train_point(os.path.join(folder, "recipe.yaml"), os.path.join(folder, "train.log"), "sft", runner,
                    extra_args, what="locft-locate")
        model, tokenizer = load_trained(run_dir, base)
        scores = evaluate_edits(model, tokenizer, pool, target_column=target, separator=separator)
        result = {"module": module, **scores, "score": counterfact_score(scores)}
        del model
        if not keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
        with staged_dir(folder) as tmp, open(os.path.join(tmp, "result.json"), "w") as handle:
            json.dump(result, handle, indent=2)
        log(f"{module}: score {result['score']:.4f} (edit {_part(scores['edit_success'])}, paraphrase "
            f"{_part(scores['paraphrase_success'])}, neighbourhood {_part(scores['neighbourhood_preservation'])})")
        results.append(result)
    best = max(range(len(results)), key=lambda i: (results[i]["score"], -i))
    summary = {**manifest, "located": results[best]["module"], "results": results}
    with staged_dir(output) as tmp, open(os.path.join(tmp, "locate.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _part(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
