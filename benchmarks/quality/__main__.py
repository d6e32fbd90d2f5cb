"""``python -m benchmarks.quality``: the papers' claims checked in direction on a tiny pre-trained decoder.

Examples::

    python -m benchmarks.quality --smoke --out /tmp/quality     # what CI runs: seconds
    python -m benchmarks.quality                                # 3 seeds, every quality row
    python -m benchmarks.quality --methods masked_thought --seeds 5
    python -m benchmarks.quality --scenario alignment,grafting   # other experiments (``all``: every one)
    python -m benchmarks.quality --methods lift-5pct --baselines full --lr-sweep "full=1e-4,3e-4,1e-3;lift-5pct=3e-4,1e-3,3e-3"
    python -m benchmarks.quality --replot benchmarks/results/quality-small-grafting   # redraw the PNGs only

A tiny Llama is pre-trained on synthetic procedural tasks (copy, reverse, counting, addition with
and without written steps; cached after the first build), then fine-tuned on a held-out target
task with each method at an equal step budget. Writes ``quality.json``, ``quality.md`` and, with
matplotlib, ``quality.png`` (the target method table) and ``scenario-NAME.png`` (one per other scenario) to
``--out`` (default ``benchmarks/results/quality-<size>/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Any

from benchmarks import common, methods
from benchmarks.quality import claims, corpus, lr_sweep, report, scenarios, tasks
from benchmarks.quality.finetune import (FinetuneConfig, finetune_once, load_pretrained, score, steps_for_epochs,
                                         train_rows)
from benchmarks.quality.pretrain import PretrainConfig, cache_root, pretrained
from ftplugins.cache import is_cached

#: The stronger decoder of issue #20: character-level over its corpus's alphabet (a BPE vocabulary broke the letter
#: tasks, measured: see ``corpus.char_tokenizer``), pre-trained on the procedural tasks plus the richer ones of
#: :mod:`benchmarks.quality.corpus` (chains of thought, facts, instructions/refusals, in-context). Rows are packed
#: (~3.5 examples a row, so 336,000 examples are about one pass in 3,000 steps), and the mix is weighted about as
#: 1/sqrt(answer length) (copy's 5-character answers had 4% of the loss's tokens next to refusals' 25%, and the
#: unpacked build learned copy 0.25 where the five-task build learned 1.00), with `add_steps` raised to 2: the
#: fine-tuning targets are chains of thought of its format.
MID = PretrainConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                     examples=336_000, steps=3_000, batch_size=32, learning_rate=1.5e-3, max_length=96,
                     max_position_embeddings=256, log_every=50, eval_every=300, pack=True,
                     tasks=(*tasks.PRETRAIN_TASKS, *corpus.CORPUS_TASKS),
                     # copy reverse count add add_steps facts word_problem multiply_steps instruct refuse icl_...
                     task_weights=(3, 3, 4, 3, 2, 3, 1, 1, 2, 1, 4, 2))

#: Pre-trained decoders by ``--size``: ``small`` fits a few CPU-minutes on 2 cores (the default, and what
#: BENCHMARKS.md reports); ``base`` is the "few million parameters" of the issue (about 5x the compute).
SIZES = {
    "small": PretrainConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                            examples=40_000, steps=1_200, batch_size=32),
    "base": PretrainConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                           examples=64_000, steps=2_000, batch_size=32, learning_rate=2e-3),
    "mid": MID,
}
SMOKE = (
    PretrainConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, examples=256,
                   steps=10, batch_size=16, eval_per_task=4, max_new_tokens=4),
    FinetuneConfig(train_examples=32, steps=3, batch_size=8, eval_target=4, eval_retention=4, max_new_tokens=4),
)


#: What a run copies from its decoder's build record besides accuracy: how and where it was built, and the held-out
#: curve (so a committed result carries the build's numbers; the cache itself is outside git).
BUILD_FACTS = ("build_wall_seconds", "device", "torch_threads", "vocab_size", "heldout_curve")


def smoke_of(config: PretrainConfig) -> PretrainConfig:
    """The smoke recipe of a decoder: SMOKE's shape and budget, with the decoder's tokenizer and tasks kept
    (``small``: exactly SMOKE[0], so its cached smoke model and CI's runs are unchanged)."""
    if config.tokenizer == "char" and config.tasks == SMOKE[0].tasks:
        return SMOKE[0]
    return replace(SMOKE[0], tokenizer=config.tokenizer, vocab_size=min(config.vocab_size, 512) or 0,
                   max_length=config.max_length, max_position_embeddings=config.max_position_embeddings,
                   tasks=config.tasks, examples=max(SMOKE[0].examples, 2 * len(config.tasks)))


def build_model(size: str, threads: int | None = None, out: str | None = None, smoke: bool = False,
                allow_dirty: bool = False) -> dict[str, Any]:
    """``--build-model``: the decoder's folder and record (built now unless cached), progress printed; with ``out``,
    also a committed record of the build (``build.json`` / ``build.md``: the machine, the commit, built now or
    found in the cache) so a build's time and accuracy on a given machine are a result, not a note."""
    dirty = common.require_clean_tree(allow_dirty or smoke) if out else None
    commit_at_start = common.git_commit()
    sys.stdout.reconfigure(line_buffering=True)
    common.offline_environment()
    common.quiet_warnings()
    import torch

    if threads:
        torch.set_num_threads(threads)
    config = smoke_of(SIZES[size]) if smoke else SIZES[size]
    cached = is_cached(cache_root(), "pretrained", config.recipe())
    folder, record = pretrained(config)
    print(f"{size}: {record['parameters']:,} parameters, vocabulary {record.get('vocab_size', '?')}, "
          f"built in {record.get('build_wall_seconds', record['seconds']):.0f} s on {record.get('device', 'cpu')}; "
          f"held-out accuracy {record['accuracy']}")
    print(f"record: {os.path.join(folder, 'pretrained.json')}")
    if out:
        machine = common.machine_info("cuda" if torch.cuda.is_available() else "cpu", dirty=dirty)
        machine["git_commit"] = commit_at_start
        result = {"machine": machine, "size": size, "smoke": smoke, "built_now": not cached, "pretrained": record}
        common.publish(out, "build", result, report.build_markdown(result))
    return record


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps, 1 seed (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/quality-<size>, "
                                      "smoke: .../quality-smoke)")
    parser.add_argument("--seeds", type=int, help="fine-tuning seeds per method (default 3; smoke 1)")
    parser.add_argument("--methods", help=f"comma-separated rows of benchmarks/methods.py (default: all quality "
                                          f"rows; baselines are added, see --baselines). Rows: {', '.join(methods.BY_NAME)}")
    parser.add_argument("--baselines", help="comma-separated baseline rows to add (default: full,lora-r8,lora-r16); "
                                            "claims whose rows are missing say 'not measured yet'")
    parser.add_argument("--size", "--model", dest="size", choices=list(SIZES), default="small",
                        help="pre-trained decoder (default small; mid: the 5M-parameter character-level decoder of "
                             "issue #20). With --smoke: "
                             "that decoder's recipe shrunk to seconds (its tokenizer and corpus kept)")
    parser.add_argument("--build-model", choices=list(SIZES), metavar="SIZE",
                        help=f"build (or find cached) the pre-trained decoder SIZE ({', '.join(SIZES)}), print its "
                             f"record and exit; nothing is fine-tuned. With --out DIR: also write DIR/build.json and "
                             f"build.md (the build's time, device, held-out accuracy; a result for BENCHMARKS.md). "
                             f"With --smoke: SIZE's recipe shrunk to seconds")
    parser.add_argument("--target", choices=list(tasks.TARGET_TASKS), help="held-out target task")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="fine-tuning steps per method (default 150)")
    budget.add_argument("--epochs", type=float,
                        help="the budget as a paper states it: steps = ceil(epochs x train examples / batch size)")
    parser.add_argument("--train-examples", type=int, help="target-task training examples per seed")
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads: the decoder's build and scoring use it; a fine-tune of a model "
                             "under 20M parameters runs on one thread from its first trainer on (ftplugins.threads, "
                             "faster for tiny matrices) unless OMP_NUM_THREADS is set")
    parser.add_argument("--scenario", default="target",
                        help=f"comma-separated experiments to run (default target; 'all': every one): "
                             f"{', '.join(scenarios.NAMES)}")
    parser.add_argument("--lr-sweep", metavar="ROW=LR,LR[;ROW=LR,...]",
                        help="train each named row at every candidate learning rate and keep the one with the best "
                             "mean validation target accuracy (held-out prompts disjoint from train and test; tie: "
                             "the lower lr); the table and the claims use its test numbers, the whole sweep goes to "
                             "quality.json / quality.md. Named rows must be selected (--methods / --baselines)")
    parser.add_argument("--sweep-part", metavar="K/N",
                        help="train only every N-th run of --lr-sweep (row, lr, seed), counting from K, into --out's "
                             "lr-sweep-runs.jsonl, and exit without a record: N processes or machines share one "
                             "sweep; concatenate their lr-sweep-runs.jsonl into one folder and run the same command "
                             "there without --sweep-part to write the record (nothing is trained again)")
    parser.add_argument("--val-examples", type=int,
                        help="validation target prompts of --lr-sweep (default 100; smoke 4)")
    parser.add_argument("--replot", metavar="DIR",
                        help="redraw the PNGs of DIR/quality.json (an earlier run's folder) into DIR and exit; "
                             "nothing is trained")
    parser.add_argument("--rejudge", metavar="DIR",
                        help="judge the claims of DIR/quality.json (an earlier run) again with today's rules "
                             "(benchmarks/quality/claims.py) from its stored numbers, rewrite its quality.json / "
                             "quality.md and exit; nothing is trained (the record keeps the commit that measured it "
                             "and adds the one that judged it)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise; --smoke runs are never committed and need no flag)")
    args = parser.parse_args(argv)
    args.lr_sweep = lr_sweep.parse(args.lr_sweep)
    args.sweep_part = lr_sweep.parse_part(args.sweep_part)
    if args.sweep_part and not args.lr_sweep:
        parser.error("--sweep-part splits an --lr-sweep; give --lr-sweep too")
    if args.val_examples is None:
        args.val_examples = 4 if args.smoke else 100
    if args.seeds is None:
        args.seeds = 1 if args.smoke else 3
    args.scenarios = scenarios.parse(args.scenario)
    return args


def summarize(runs: dict[str, list[dict[str, Any]]], before: dict[str, Any], specs: list[methods.MethodSpec]
              ) -> dict[str, Any]:
    summary: dict[str, Any] = {"pretrained": {
        "target_mean": before["target"], "target_std": 0.0, "retention_mean": before["retention"],
        "retention_std": 0.0, "forgetting_mean": 0.0, "forgetting_std": 0.0, "trainable_params": 0,
        "note": "the pre-trained model, not fine-tuned", "retention_per_task": before["retention_per_task"],
    }}
    for spec in specs:
        rows = runs.get(spec.name)
        if not rows:
            continue
        entry: dict[str, Any] = {"note": spec.note, "learning_rate": rows[0]["learning_rate"],
                                 "trainable_params": rows[0]["trainable_params"], "per_seed": rows}
        for metric, values in (("target", [r["target"] for r in rows]),
                               ("retention", [r["retention"] for r in rows]),
                               ("forgetting", [before["retention"] - r["retention"] for r in rows])):
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = common.mean_std(values)
        summary[spec.name] = entry
    return summary


def wrote(out: str, names: list[str]) -> str:
    """The run's last line: what it wrote, or why there is no PNG."""
    pngs = [n for n in names if n.endswith(".png")]
    return f"wrote {out}/" + ", ".join(names) + ("" if pngs or common.have_matplotlib()
                                                 else " (no PNG: pip install matplotlib)")


def replot(folder: str) -> dict[str, Any]:
    """``--replot``: the figures of an earlier run, from its ``quality.json`` (plots change without retraining)."""
    with open(os.path.join(folder, "quality.json")) as handle:
        result = json.load(handle)
    print(wrote(folder, report.plots(result, folder)))
    return result


def rejudge(folder: str, allow_dirty: bool) -> dict[str, Any]:
    """``--rejudge``: an earlier run's claims judged by today's rules from its stored rows (when a rule changes, the
    numbers it reads do not; retraining would only repeat them). ``claims_judged_at`` names the judging commit."""
    dirty = common.require_clean_tree(allow_dirty)
    path = os.path.join(folder, "quality.json")
    with open(path) as handle:
        result = json.load(handle)
    before = {c["claim"]: c["verdict"] for c in result.get("claims", [])}
    result["claims"] = claims.verdicts(result.get("summary", {}), result.get("skipped", {}),
                                       scenarios=set(result.get("scenarios_run", ["target"])),
                                       scenario_results=result.get("scenarios", {}), lr_sweep=result.get("lr_sweep"),
                                       finetune=(result.get("config") or {}).get("finetune"))
    result["claims_judged_at"] = {"git_commit": common.git_commit(), "dirty": dirty}
    common.write_json(path, result)
    common.write_text(os.path.join(folder, "quality.md"), report.markdown(result))
    for claim in result["claims"]:
        if before.get(claim["claim"], claim["verdict"]) != claim["verdict"]:
            print(f"{claim['claim']}: {before[claim['claim']]} -> {claim['verdict']}")
    print(f"rejudged {path}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.replot:
        return replot(args.replot)
    if args.rejudge:
        return rejudge(args.rejudge, args.allow_dirty)
    if args.build_model:
        return build_model(args.build_model, args.threads, args.out, args.smoke, args.allow_dirty)
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    # The commit the run's code came from: read now, since the tree may move on during a long run.
    commit_at_start = common.git_commit()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up live when piped
    common.offline_environment()
    common.quiet_warnings()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    pre_config, ft_config = (smoke_of(SIZES[args.size]), SMOKE[1]) if args.smoke else (SIZES[args.size],
                                                                                       FinetuneConfig())
    overrides = {k: v for k, v in (("target", args.target), ("steps", args.steps),
                                   ("train_examples", args.train_examples)) if v is not None}
    ft_config = replace(ft_config, **overrides)
    if args.epochs is not None:
        ft_config = replace(ft_config, steps=steps_for_epochs(args.epochs, ft_config.train_examples,
                                                              ft_config.batch_size))
        print(f"--epochs {args.epochs:g}: {ft_config.steps} steps of {ft_config.batch_size} over "
              f"{ft_config.train_examples} examples")
    out = args.out or os.path.join(common.RESULTS_DIR, "quality-smoke" if args.smoke else f"quality-{args.size}")
    seeds = list(range(args.seeds))

    specs, skipped = [], {}
    selected = methods.select(args.methods, "quality", args.baselines) if "target" in args.scenarios else []
    for spec in selected:
        reason = methods.unavailable_reason(spec)
        if reason is None:
            specs.append(spec)
        elif spec.baseline:
            raise SystemExit(f"baseline {spec.name} cannot run: {reason}")
        else:
            skipped[spec.name] = reason
            print(f"skip {spec.name}: {reason}")

    started = time.perf_counter()
    # Scenarios of other model families (diffusion) declare NEEDS_DECODER = False: a run of only those skips the
    # decoder's pre-training (tens of CPU-minutes on a busy machine when it is not cached).
    needs_decoder = "target" in args.scenarios or any(
        getattr(scenarios.module(name), "NEEDS_DECODER", True) for name in args.scenarios if name != "target")
    folder = record = before = None
    if needs_decoder:
        folder, record = pretrained(pre_config)
        model, tokenizer = load_pretrained(folder)
        retention_tasks = list(pre_config.tasks)
        retention_exclude = {r["prompt"] for r in tasks.examples(retention_tasks, pre_config.examples,
                                                                 pre_config.seed)}
        target_exclude = {r["prompt"] for seed in seeds for r in train_rows(ft_config, seed)}
        target_test = tasks.held_out(ft_config.target, ft_config.eval_target, seed=0, exclude=target_exclude)
        # A sweep part writes no record, so it skips scoring the pre-trained model (the record's run does it).
        if args.sweep_part:
            before = {"retention": float("nan")}
        else:
            before = score(model, tokenizer, ft_config, target_test, retention_tasks, retention_exclude)
            print(f"pre-trained: target {before['target']:.3f}, retention {before['retention']:.3f} "
                  f"{ {k: round(v, 3) for k, v in before['retention_per_task'].items()} }")
        del model

    runs: dict[str, list[dict[str, Any]]] = {}
    sweep_record: dict[str, Any] | None = None
    if args.lr_sweep:
        missing = [n for n in args.lr_sweep if n not in {s.name for s in specs} and n not in skipped]
        if missing:
            raise SystemExit(f"--lr-sweep names rows that are not selected: {', '.join(missing)} (add them to --methods)")
        test_prompts = {r["prompt"] for r in target_test}
        target_val = [r for r in tasks.held_out(ft_config.target, args.val_examples, seed=lr_sweep.VAL_SEED,
                                                exclude=target_exclude | test_prompts)
                      if r["prompt"] not in target_exclude | test_prompts]
        print(f"lr sweep: {len(target_val)} validation target prompts (disjoint from train and test); "
              f"{ {k: v for k, v in args.lr_sweep.items()} }")
        runs, rows = lr_sweep.run(
            specs, args.lr_sweep, seeds, out,
            cache_key={"pretrained": record["key"], "finetune": asdict(ft_config), "val": args.val_examples,
                       "val_seed": lr_sweep.VAL_SEED},
            train=lambda spec, seed: finetune_once(spec, folder, ft_config, seed, target_test, retention_tasks,
                                                   retention_exclude, target_val=target_val),
            before_retention=before["retention"], skipped=skipped, full_lr=ft_config.full_lr, part=args.sweep_part)
        if args.sweep_part:
            print(f"sweep part {args.sweep_part[0]}/{args.sweep_part[1]} done: its runs are in "
                  f"{os.path.join(out, lr_sweep.RUNS_FILE)}; no record written")
            return {}
        specs = [s for s in specs if s.name in runs]
        sweep_record = {"val_examples": len(target_val), "val_seed": lr_sweep.VAL_SEED,
                        "rule": "the candidate with the highest mean validation target accuracy over the seeds "
                                "(tie: the lower lr); the row's test numbers are that lr's",
                        "rows": rows}
    for seed in seeds if not args.lr_sweep else []:
        for spec in specs:
            try:
                result = finetune_once(spec, folder, ft_config, seed, target_test, retention_tasks, retention_exclude)
            except Exception as exc:
                if spec.baseline:
                    raise
                skipped[spec.name] = f"failed during fine-tuning ({type(exc).__name__}: {exc})"
                print(f"  {spec.name}: FAILED: {skipped[spec.name]}")
                specs = [s for s in specs if s is not spec]
                runs.pop(spec.name, None)
                continue
            runs.setdefault(spec.name, []).append(result)
            print(f"  seed {seed} {spec.name:<22} target {result['target']:.3f}  retention {result['retention']:.3f}  "
                  f"loss {result['final_loss']:.3f}  ({result['train_seconds']:.0f} s)")

    summary = summarize(runs, before, specs) if before is not None else {}
    from benchmarks.quality.pretrain import cache_root
    from benchmarks.quality.scenarios._common import Context

    scenario_results: dict[str, Any] = {}
    for name in args.scenarios:
        if name == "target":
            continue
        module = scenarios.module(name)
        print(f"scenario {name}: {module.TITLE}")
        scenario_started = time.perf_counter()
        ctx = Context(folder=folder, key=record["key"] if record else None, pretrain=pre_config, seeds=seeds, smoke=args.smoke,
                      cache_root=cache_root())
        scenario_results[name] = {"title": module.TITLE, "design": module.DESIGN, **module.run(ctx),
                                  "elapsed_s": time.perf_counter() - scenario_started}
    machine = {**common.machine_info("cpu", dirty=dirty), "git_commit": commit_at_start}
    result = {
        "harness": "quality",
        "config": {"pretrain": asdict(pre_config), "finetune": asdict(ft_config), "seeds": seeds},
        "machine": machine,
        "pretrained": None if record is None else {
            "folder": os.path.relpath(folder, common.REPO_ROOT), "key": record["key"],
            "parameters": record["parameters"], "build_seconds": record["seconds"], "accuracy": record["accuracy"],
            **{k: record[k] for k in BUILD_FACTS if k in record}},
        "summary": summary,
        "scenarios_run": args.scenarios,
        **({"lr_sweep": sweep_record} if sweep_record is not None else {}),
        "scenarios": scenario_results,
        "claims": claims.verdicts(summary, skipped, scenarios=set(args.scenarios),
                                  scenario_results=scenario_results, lr_sweep=sweep_record,
                                  finetune=asdict(ft_config)),
        "skipped": skipped,
        "elapsed_s": time.perf_counter() - started,
    }
    common.write_json(os.path.join(out, "quality.json"), result)
    common.write_text(os.path.join(out, "quality.md"), report.markdown(result))
    pngs = report.plots(result, out)
    print(report.markdown(result))
    print(wrote(out, ["quality.json", "quality.md", *pngs]))
    return result


if __name__ == "__main__":
    main()
