"""Sample-efficiency sweep: train one recipe on nested subsets of its data, score each run, plot score vs data.

The procedure of the empirical studies among the seed papers (few-shot fine-tuning vs domain adaptation;
instruction-tuned models reaching full-data scores with a fraction of the data; fine-tuning vs in-context examples
for low-resource languages): ``ftplugins sweep --config recipe.yaml --train-fraction 0.01,0.05,0.25,1`` (or
``--k-shot 1,3,8 --label-column label``).

For each point the sweep writes, under ``OUTPUT/points/<point>/``: the subset (:mod:`.subsets`, nested and seeded)
as ``data/train.jsonl``; ``recipe.yaml``, the recipe with its dataset, output folder and evaluation split replaced;
``run/``, the training run (``python -m ftplugins.train`` in a subprocess, or under ``--launcher``, e.g.
``accelerate launch``); ``train.log``; and ``result.json``, written last and atomically. The score (higher is
better) is the held-out score of the saved model (the soup's evaluators: minus the token loss of ``--heldout``
rows, ``exact_match``, or ``--evaluator pkg.mod:func``), or a metric a plugin of the recipe wrote into the run
folder (``--score-file mbpp_eval.json --score-key pass@1``). ``OUTPUT/sweep.json`` and ``sweep.png`` hold the
curve.

Resuming: a point whose ``result.json`` exists for the same rows is not trained again; a point without one (a
crash during its training) is trained again from scratch. ``sweep_manifest.json`` records the recipe, pool and
seed; a rerun with different ones into the same folder is refused (``--overwrite`` starts over).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftplugins.errors import FtpluginsError

from . import subsets


@dataclass
class Point:
    """One training run of the sweep: ``kind`` "fraction" or "shots", its ``value``, the pool rows it trains on."""

    kind: str
    value: float
    indices: list[int]

    @property
    def name(self) -> str:
        return f"fraction-{self.value:g}" if self.kind == "fraction" else f"shots-{int(self.value)}"

    @property
    def rows_sha(self) -> str:
        return hashlib.sha256(json.dumps(self.indices).encode()).hexdigest()[:16]


def plan(pool: Any, fractions: Sequence[float] | None = None, shots: Sequence[int] | None = None,
         label_column: str = "label", seed: int = 0) -> list[Point]:
    """The sweep's points over ``pool`` (a ``datasets.Dataset`` or a list of rows), smallest first."""
    if (fractions is None) == (shots is None):
        raise FtpluginsError("a sweep takes either --train-fraction or --k-shot (one of them)")
    if fractions is not None:
        return [Point("fraction", f, rows) for f, rows in subsets.fraction_subsets(len(pool), fractions, seed).items()]
    columns = pool.column_names if hasattr(pool, "column_names") else list(pool[0]) if len(pool) else []
    if label_column not in columns:
        raise FtpluginsError(f"--k-shot: the training data has no column {label_column!r} (it has {columns}); pass "
                             "--label-column with the class column")
    labels = pool[label_column] if hasattr(pool, "column_names") else [row[label_column] for row in pool]
    return [Point("shots", k, rows) for k, rows in subsets.kshot_subsets(labels, shots, seed).items()]


# --- the recipe and its data ----------------------------------------------------------------------------------


def load_pool(config: dict, data: str | None = None) -> Any:
    """The rows the sweep takes subsets of: ``data`` (a .jsonl/.json file) or the recipe's train split."""
    import datasets

    if data:
        if not os.path.isfile(data):
            raise FtpluginsError(f"--data {data!r}: no such file; give a .jsonl or .json file of training rows")
        return datasets.load_dataset("json", data_files=data, split="train")
    if config.get("datasets"):
        raise FtpluginsError("the recipe trains on a mixture (datasets:); a sweep needs one pool: pass --data FILE")
    name = config.get("dataset_name")
    if not name:
        raise FtpluginsError("the recipe names no dataset_name; set it or pass --data FILE (the training rows)")
    return datasets.load_dataset(name, name=config.get("dataset_config"),
                                 split=config.get("dataset_train_split", "train"))


def point_recipe(config: dict, data_dir: str, run_dir: str) -> dict:
    """The recipe for one point: its subset, its run folder, no evaluation split (the sweep scores the run)."""
    recipe = {k: v for k, v in config.items() if k not in ("dataset_config", "dataset_test_split", "datasets")}
    recipe.update(dataset_name=data_dir, dataset_train_split="train", output_dir=run_dir, eval_strategy="no")
    return recipe


def file_sha(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def pool_sha(pool: Any) -> str:
    digest = hashlib.sha256()
    for row in pool:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


# --- running the sweep ----------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """How a finished run is scored: by a file a plugin wrote into it, or by an evaluator on the saved model."""

    heldout: str | None = None
    heldout_metric: str = "loss"
    evaluator: str | None = None
    score_file: str | None = None
    score_key: str | None = None

    def check(self) -> None:
        if self.score_file and not self.score_key:
            raise FtpluginsError("--score-file needs --score-key: the metric to read (e.g. pass@1)")
        if not (self.score_file or self.heldout or self.evaluator):
            raise FtpluginsError("a sweep needs a score for each run: --heldout FILE.jsonl (minus the token loss, or "
                                 "--heldout-metric exact_match), --evaluator package.module:function, or --score-file "
                                 "FILE --score-key KEY (a metric a plugin of the recipe writes, e.g. mbpp_eval.json "
                                 "pass@1)")

    @property
    def metric(self) -> str:
        if self.score_file:
            return f"{self.score_file}:{self.score_key}"
        return self.evaluator or f"heldout {self.heldout_metric}"

    def score(self, run_dir: str, base: str | None) -> float:
        if self.score_file:
            return read_score(os.path.join(run_dir, self.score_file), self.score_key)
        from .heldout import make_evaluator

        model, tokenizer = load_trained(run_dir, base)
        return float(make_evaluator(tokenizer, self.heldout, self.heldout_metric, self.evaluator)(model))


def read_score(path: str, key: str) -> float:
    if not os.path.isfile(path):
        raise FtpluginsError(f"--score-file: the run wrote no {os.path.basename(path)} ({path}); list the plugin "
                             "that writes it in the recipe (e.g. mbpp_eval writes mbpp_eval.json)")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    metrics = data.get("metrics", data) if isinstance(data, dict) else {}
    if key not in metrics:
        raise FtpluginsError(f"--score-key {key!r}: {path} has no such metric; it has {sorted(metrics)}")
    return float(metrics[key])


def load_trained(run_dir: str, base: str | None) -> tuple[Any, Any]:
    """The model a run saved (a PEFT adapter is loaded onto ``base``, the recipe's model) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(run_dir, "adapter_config.json")):
        from ftplugins.peft_types import load_adapter

        model = load_adapter(AutoModelForCausalLM.from_pretrained(base), run_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(run_dir)
    return model, AutoTokenizer.from_pretrained(run_dir)


def train_point(recipe_path: str, log_path: str, command: str, launcher: Sequence[str],
                extra_args: Sequence[str], what: str = "sweep") -> None:
    """``python -m ftplugins.train COMMAND --config RECIPE`` in a subprocess (under ``launcher``), output in
    ``log_path``; a failure names the log (``what``: the tool, for the message)."""
    argv = [*launcher, "-m", "ftplugins.train", command, "--config", recipe_path, *extra_args]
    with open(log_path, "w") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    if code != 0:
        with open(log_path, errors="replace") as log:
            tail = log.read()[-600:].strip().splitlines()[-1:] or ["(no output)"]
        raise FtpluginsError(f"{what}: training failed (exit {code}) for {os.path.dirname(log_path)}: {tail[0]}; "
                             f"see {log_path}. Fix it and run the same command again: finished runs are kept")


def run_sweep(config_path: str, output: str, scorer: Scorer, *, fractions: Sequence[float] | None = None,
              shots: Sequence[int] | None = None, label_column: str = "label", seed: int = 0,
              data: str | None = None, command: str = "sft", launcher: str | None = None,
              extra_args: Sequence[str] = (), overwrite: bool = False, log: Any = print) -> dict:
    """Run (or resume) the sweep into ``output``; returns what ``sweep.json`` holds."""
    import yaml

    from ftplugins.atomic import staged_dir
    from ftplugins.config_file import load_config

    scorer.check()
    config = load_config(config_path)
    pool = load_pool(config, data)
    points = plan(pool, fractions, shots, label_column, seed)
    manifest = {"config": os.path.abspath(config_path), "config_sha": file_sha(config_path), "pool_rows": len(pool),
                "pool_sha": pool_sha(pool), "seed": seed, "command": command, "metric": scorer.metric}
    prepare_output(output, manifest, overwrite)
    runner = shlex.split(launcher) if launcher else [sys.executable]
    results = []
    for point in points:
        folder = os.path.join(output, "points", point.name)
        result = finished(folder, point, scorer.metric)
        if result is not None:
            log(f"{point.name}: {len(point.indices)} rows, done before (score {result['score']:.6g})")
            results.append(result)
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a crash during this point's training: start it over
        os.makedirs(folder)
        with staged_dir(os.path.join(folder, "data")) as tmp:
            pool.select(point.indices).to_json(os.path.join(tmp, "train.jsonl"))
        recipe_path = os.path.join(folder, "recipe.yaml")
        with staged_dir(folder) as tmp, open(os.path.join(tmp, "recipe.yaml"), "w") as handle:
            yaml.safe_dump(point_recipe(config, os.path.join(folder, "data"), os.path.join(folder, "run")), handle,
                           sort_keys=False)
        log(f"{point.name}: training on {len(point.indices)} rows ...")
        train_point(recipe_path, os.path.join(folder, "train.log"), command, runner, extra_args)
        score = scorer.score(os.path.join(folder, "run"), config.get("model_name_or_path"))
        result = {"point": point.name, "kind": point.kind, "value": point.value, "rows": len(point.indices),
                  "rows_sha": point.rows_sha, "metric": scorer.metric, "score": score}
        with staged_dir(folder) as tmp, open(os.path.join(tmp, "result.json"), "w") as handle:
            json.dump(result, handle, indent=2)
        log(f"{point.name}: score {score:.6g}")
        results.append(result)
    summary = {**manifest, "kind": points[0].kind, "points": results}
    write_summary(summary, output)
    return summary


def prepare_output(output: str, manifest: dict, overwrite: bool, name: str = "sweep_manifest.json",
                   what: str = "sweep", points: str = "points") -> None:
    """Record ``manifest`` in ``output/name``; a folder holding another tool run's (``what``) is refused, or with
    ``overwrite`` its ``points`` folder is cleared, so results of another recipe or pool are never resumed."""
    from ftplugins.atomic import staged_dir

    path = os.path.join(output, name)
    if os.path.isfile(path):
        with open(path) as handle:
            previous = json.load(handle)
        if previous != manifest:
            if not overwrite:
                changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
                raise FtpluginsError(f"{what}: {output} holds a run of another recipe, data, seed or setting ("
                                     f"{', '.join(changed)} changed); use a new --output, or --overwrite to start over")
            shutil.rmtree(os.path.join(output, points), ignore_errors=True)
    os.makedirs(output, exist_ok=True)
    with staged_dir(output) as tmp, open(os.path.join(tmp, name), "w") as handle:
        json.dump(manifest, handle, indent=2)


def finished(folder: str, point: Point, metric: str) -> dict | None:
    path = os.path.join(folder, "result.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        result = json.load(handle)
    return result if result.get("rows_sha") == point.rows_sha and result.get("metric") == metric else None


def write_summary(summary: dict, output: str) -> list[str]:
    from ftplugins.atomic import staged_dir

    written = [os.path.join(output, "sweep.json")]
    with staged_dir(output) as tmp:
        with open(os.path.join(tmp, "sweep.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        if _plot(summary, os.path.join(tmp, "sweep.png")):
            written.append(os.path.join(output, "sweep.png"))
    return written


def _plot(summary: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = summary["points"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["rows"] for p in points], [p["score"] for p in points], marker="o")
    for p in points:
        ax.annotate(p["point"], (p["rows"], p["score"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    if len(points) > 1 and points[-1]["rows"] / max(points[0]["rows"], 1) >= 20:
        ax.set_xscale("log")
    ax.set(xlabel="training rows", ylabel=summary["metric"], title="score vs training data")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
