"""``--lr-sweep``: per-row candidate learning rates, chosen on a validation split, reported on the test set.

``--lr-sweep "lift-5pct=3e-4,1e-3,3e-3;lora-r16=6e-4,2e-3,6e-3"`` trains each named row at every
candidate learning rate (every seed), scores each run on ``--val-examples`` held-out target prompts
(disjoint from every seed's training prompts and from the test prompts) besides the usual test
scores, and picks the row's learning rate by the mean validation target accuracy over the seeds
(a tie goes to the lower learning rate). The row's table entry (and every claim) then uses the test
numbers of the chosen learning rate; the whole sweep (validation and test per learning rate) goes to
``quality.json`` (``lr_sweep``) and ``quality.md``. Rows selected but not named in the sweep train at
their own learning rate only (their validation score is recorded too). The test set never picks
anything.

Each finished run is appended to ``lr-sweep-runs.jsonl`` in the output folder, keyed by row, learning
rate, seed and the whole configuration, and reused by a rerun with the same configuration: a sweep
cut short can be resumed, or re-reported with fewer rows, without training again.

``--sweep-part K/N`` splits one sweep over N processes (or machines): a part trains only every N-th
(row, learning rate, seed) run, counting from K, into its own ``--out`` folder and writes no record;
concatenating the parts' ``lr-sweep-runs.jsonl`` into one folder and running the same command without
``--sweep-part`` there writes the record, training nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from benchmarks import common, methods

#: Validation split: target prompts drawn with this ``tasks.held_out`` seed (the test set uses seed 0).
VAL_SEED = 1
RUNS_FILE = "lr-sweep-runs.jsonl"


def parse(text: str | None) -> dict[str, list[float]]:
    """``"row=lr,lr;row=lr"`` -> ``{row: [lr, ...]}`` (ascending, distinct)."""
    if not text:
        return {}
    out: dict[str, list[float]] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SystemExit(f"--lr-sweep: '{part}' is not 'row=lr,lr,...'")
        if name not in methods.BY_NAME:
            raise SystemExit(f"--lr-sweep: no row '{name}'; rows are {', '.join(methods.BY_NAME)}")
        try:
            lrs = sorted({float(v) for v in values.split(",") if v.strip()})
        except ValueError as exc:
            raise SystemExit(f"--lr-sweep: {part}: {exc}") from exc
        if not lrs or any(lr <= 0 for lr in lrs):
            raise SystemExit(f"--lr-sweep: {part}: give one or more positive learning rates")
        out[name] = lrs
    return out


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``."""
    if not text:
        return None
    k, sep, n = text.partition("/")
    try:
        part = (int(k), int(n))
    except ValueError:
        part = None
    if not sep or part is None or not 0 <= part[0] < part[1]:
        raise SystemExit(f"--sweep-part {text!r}: give K/N with 0 <= K < N, e.g. 0/4 for the first of four parts")
    return part


def lr_key(lr: float) -> str:
    return f"{lr:.0e}" if float(f"{lr:.0e}") == lr else repr(lr)


def choose(per_lr: dict[str, dict[str, Any]], metric: str = "val_target") -> str:
    """The learning rate (key of ``per_lr``) with the best mean validation accuracy (``<metric>_mean``); a tie goes
    to the lower one."""
    return max(per_lr, key=lambda k: (round(per_lr[k][f"{metric}_mean"], 9), -per_lr[k]["learning_rate"]))


def run(specs: list[methods.MethodSpec], sweep: dict[str, list[float]], seeds: list[int], out: str,
        cache_key: dict[str, Any], train: Callable[[methods.MethodSpec, int], dict[str, Any]],
        before_retention: float, skipped: dict[str, str], full_lr: float, part: tuple[int, int] | None = None
        ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Train every (row, candidate lr, seed); the chosen lr's per-seed runs per row, and the sweep record.

    ``train(spec, seed)`` fine-tunes once (the spec carries the learning rate) and returns the run's
    scores including ``val_target``. A row that fails is dropped into ``skipped`` (baselines re-raise).
    ``part=(K, N)``: train only the runs numbered K, K+N, ... in (row, lr, seed) order and return nothing.
    """
    path = os.path.join(out, RUNS_FILE)
    config_hash = hashlib.sha256(json.dumps(cache_key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if item.get("config") == config_hash:
                    done[(item["row"], lr_key(item["learning_rate"]), item["seed"])] = item["result"]
    os.makedirs(out, exist_ok=True)
    def candidates(spec: methods.MethodSpec) -> list[float]:
        return sweep.get(spec.name) or [spec.learning_rate or full_lr]

    if part:
        jobs = [(spec, lr, seed) for spec in specs for lr in candidates(spec) for seed in seeds]
        mine = jobs[part[0]::part[1]]
        print(f"--sweep-part {part[0]}/{part[1]}: {len(mine)} of the sweep's {len(jobs)} runs")
        for spec, lr, seed in mine:
            if (spec.name, lr_key(lr), seed) not in done:
                result = train(replace(spec, learning_rate=lr), seed)
                _append(path, config_hash, spec.name, seed, result)
                _print_run(spec.name, seed, result)
        return {}, {}
    chosen_runs: dict[str, list[dict[str, Any]]] = {}
    record: dict[str, Any] = {}
    for spec in specs:
        per_lr: dict[str, dict[str, Any]] = {}
        failed = False
        for lr in candidates(spec):
            row_spec = replace(spec, learning_rate=lr)
            results = []
            for seed in seeds:
                key = (spec.name, lr_key(lr), seed)
                if key in done:
                    result = done[key]
                    print(f"  seed {seed} {spec.name:<22} lr {lr_key(lr)}  (reused from {RUNS_FILE})")
                else:
                    try:
                        result = train(row_spec, seed)
                    except Exception as exc:
                        if spec.baseline:
                            raise
                        skipped[spec.name] = f"failed during fine-tuning ({type(exc).__name__}: {exc})"
                        print(f"  {spec.name}: FAILED: {skipped[spec.name]}")
                        failed = True
                        break
                    _append(path, config_hash, spec.name, seed, result)
                    _print_run(spec.name, seed, result)
                results.append(result)
            if failed:
                break
            entry: dict[str, Any] = {"learning_rate": results[0]["learning_rate"], "per_seed": results}
            for metric, values in (("val_target", [r["val_target"] for r in results]),
                                   ("target", [r["target"] for r in results]),
                                   ("retention", [r["retention"] for r in results]),
                                   ("forgetting", [before_retention - r["retention"] for r in results])):
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = common.mean_std(values)
            per_lr[lr_key(entry["learning_rate"])] = entry
        if failed:
            continue
        chosen = choose(per_lr)
        chosen_runs[spec.name] = per_lr[chosen]["per_seed"]
        record[spec.name] = {"swept": spec.name in sweep, "default_lr": spec.learning_rate or full_lr,
                             "candidates": list(per_lr), "chosen": chosen,
                             "chosen_lr": per_lr[chosen]["learning_rate"], "per_lr": per_lr}
        summary = ", ".join(f"{k}: val {v['val_target_mean']:.3f} test {v['target_mean']:.3f}" for k, v in per_lr.items())
        print(f"  {spec.name}: chosen lr {chosen} ({summary})")
    return chosen_runs, record


def _append(path: str, config_hash: str, row: str, seed: int, result: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps({"config": config_hash, "row": row, "learning_rate": result["learning_rate"],
                                 "seed": seed, "result": result}, default=str) + "\n")


def _print_run(row: str, seed: int, result: dict[str, Any]) -> None:
    print(f"  seed {seed} {row:<22} lr {lr_key(result['learning_rate'])}  val {result['val_target']:.3f}"
          f"  target {result['target']:.3f}  retention {result['retention']:.3f}  "
          f"loss {result['final_loss']:.3f}  ({result['train_seconds']:.0f} s)")
