"""``ftplugins soup`` and ``ftplugins analyze intruders``: the model tools from the command line.

* ``ftplugins soup A B C -o OUT`` writes the uniform soup of model (or adapter) folders;
  ``--greedy --heldout FILE.jsonl`` the greedy soup scored by held-out loss, or by ``--evaluator pkg.mod:func``
  (``func(model, tokenizer) -> float``, higher is better). ``--deltas`` soups sparse delta files into one delta.
* ``ftplugins analyze intruders BASE TUNED`` counts intruder dimensions (see :mod:`ftplugins.tools.intruders`).
* ``ftplugins sweep --config RECIPE --train-fraction 0.01,0.25,1 -o OUT`` trains a recipe on nested subsets and
  plots score vs data (see :mod:`ftplugins.tools.sweep`).
* ``ftplugins analyze probe-prune BASE TUNED --data FILE`` probes, prunes the wrapper units and optionally reverse
  fine-tunes (see :mod:`ftplugins.tools.probe_prune`).
"""

from __future__ import annotations

import argparse
import json


def cmd_soup(args: argparse.Namespace) -> None:
    from ftplugins.errors import FtpluginsError

    from . import soup

    if args.deltas and not args.greedy:
        soup.soup_deltas(args.ingredients, args.output, overwrite=args.overwrite)
        print(f"wrote the mean of {len(args.ingredients)} sparse deltas to {args.output}")
        return
    if not args.greedy:
        soup.uniform(args.ingredients, args.output, overwrite=args.overwrite)
        print(f"wrote the uniform soup of {len(args.ingredients)} ingredients to {args.output}")
        return
    if not args.heldout and not args.evaluator:
        raise FtpluginsError("--greedy needs a held-out set to score ingredients: pass --heldout FILE.jsonl (rows with "
                             "a 'text' field, or prompt/target with --heldout-metric exact_match) or --evaluator "
                             "package.module:function")
    if args.deltas and not args.base:
        raise FtpluginsError("--greedy --deltas needs --base: the model folder the deltas were made from (each "
                             "candidate soup is scored as base + mean of the deltas)")
    from transformers import AutoTokenizer

    from .heldout import make_evaluator
    from .ingredients import Ingredient

    adapters = not args.deltas and Ingredient(args.ingredients[0]).kind == "adapter"
    tokenizer_path = args.base if (args.deltas or adapters) and args.base else args.ingredients[0]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    evaluate = make_evaluator(tokenizer, args.heldout, args.heldout_metric, args.evaluator, args.heldout_text_field)
    if args.deltas:
        result = soup.greedy_deltas(args.ingredients, args.base, args.output, evaluate, strict=args.strict,
                                    overwrite=args.overwrite)
    else:
        result = soup.greedy(args.ingredients, args.output, evaluate, base=args.base, strict=args.strict,
                             overwrite=args.overwrite)
    print(json.dumps({"chosen": result.chosen, "scores": result.scores, "soup_score": result.soup_score}, indent=2))
    print(f"wrote the greedy soup of {len(result.chosen)}/{len(args.ingredients)} ingredients to {args.output}")


def add_soup_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("soup", help="average fine-tuned models or adapters (uniform or greedy model soup)")
    parser.add_argument("ingredients", nargs="+", help="model or adapter folders (save_pretrained output); with "
                        "--deltas, sparse delta files")
    parser.add_argument("-o", "--output", required=True, help="output folder (new or empty; with --deltas, a file)")
    parser.add_argument("--greedy", action="store_true", help="greedy soup: add ingredients, best first, while the "
                        "held-out score does not drop")
    parser.add_argument("--strict", action="store_true", help="greedy: add only if the score strictly improves "
                        "(the reference code's >; default >=, the paper's Algorithm 1)")
    parser.add_argument("--heldout", help="held-out .jsonl/.json file (see --heldout-metric)")
    parser.add_argument("--heldout-metric", choices=("loss", "exact_match"), default="loss",
                        help="loss: minus the mean token loss of 'text' rows (default); exact_match: share of "
                        "prompt/target rows whose target the model predicts exactly")
    parser.add_argument("--heldout-text-field", default="text", help="the field of each held-out row (default text)")
    parser.add_argument("--evaluator", help="package.module:function scoring a model: func(model, tokenizer) -> float")
    parser.add_argument("--base", help="base model folder of adapter ingredients (default: their recorded base), or of "
                        "sparse deltas (needed with --greedy --deltas)")
    parser.add_argument("--deltas", action="store_true", help="the ingredients are sparse delta files of one base")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder / over a file")
    parser.set_defaults(func=cmd_soup)
    return parser


def add_subparsers(subparsers) -> None:
    """Add the tools' commands to the ``ftplugins`` command."""
    add_soup_parser(subparsers)
    add_analyze_parser(subparsers)
    add_sweep_parser(subparsers)


def cmd_intruders(args: argparse.Namespace) -> None:
    from . import intruders

    epsilons = args.epsilon or list(intruders.EPSILONS)
    report = intruders.analyze(intruders.pairs_for(args.base, args.tuned, args.include), k=args.k, epsilons=epsilons)
    plots = {}
    for name in args.plot or []:
        pair = [(w0, w) for n, w0, w in intruders.pairs_for(args.base, args.tuned, args.include) if n == name]
        if not pair:
            from ftplugins.errors import FtpluginsError

            raise FtpluginsError(f"--plot {name}: no such analysed matrix; choose one of "
                                 f"{[m.name for m in report.matrices][:5]} ...")
        plots[name] = intruders.similarity(*pair[0], k=args.k)
    written = intruders.write_report(report, args.output, plots)
    totals = ", ".join(f"ε={e}: {report.total(e)}" for e in report.epsilons)
    print(f"intruder dimensions over {len(report.matrices)} matrices (top {args.k}): {totals}; wrote "
          f"{', '.join(written)}")


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("analyze", help="analyses of a fine-tuned model against its base")
    sub = parser.add_subparsers(dest="analyze_command", required=True)
    p = sub.add_parser("intruders", help="intruder dimensions: fine-tuned singular vectors unlike any pre-trained one")
    p.add_argument("base", help="pre-trained model folder")
    p.add_argument("tuned", help="fine-tuned model folder, PEFT adapter folder, or sparse delta file")
    p.add_argument("-o", "--output", default="intruders.json", help="JSON report (a PNG is written beside it when "
                   "matplotlib is installed); default intruders.json")
    p.add_argument("--k", type=int, default=10, help="top fine-tuned singular vectors examined per matrix (default 10)")
    p.add_argument("--epsilon", type=float, action="append", help="cosine threshold; repeat to sweep (default 0.5)")
    p.add_argument("--include", help="regular expression of matrix names to analyse (default: every 2-D weight but "
                   "the embeddings and the output head)")
    p.add_argument("--plot", action="append", help="also draw the similarity matrix of this matrix (repeatable)")
    p.set_defaults(func=cmd_intruders)
    add_probe_prune_parser(sub)
    return parser


def cmd_probe_prune(args: argparse.Namespace) -> None:
    from ftplugins.eval.report import parse_ks

    from . import probe_prune

    units = [] if args.units.strip() == "0" else parse_ks(args.units, "--units")
    texts, labels = probe_prune.load_texts(args.data, args.text_field, args.label_field)
    base, tuned, tokenizer = probe_prune.load_pair(args.base, args.tuned)
    report = probe_prune.analyze(base, tuned, tokenizer, texts, labels, units=units, mode=args.mode,
                                 reverse_steps=args.reverse_steps, reverse_learning_rate=args.reverse_lr,
                                 backend=args.probe, seed=args.seed)
    written = probe_prune.write_report(report, args.output)
    best = {v: round(max(a), 3) for v, a in report.probes.items()}
    print(f"best probe accuracy per model: {best}; KL to base: "
          f"{ {v: round(b['kl_to_base'], 5) for v, b in report.behaviour.items()} }; wrote {', '.join(written)}")


def add_probe_prune_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("probe-prune", help="per-layer probes of a pre-training property, base vs fine-tuned; prune "
                       "the units fine-tuning changed most; optional reverse fine-tuning")
    p.add_argument("base", help="pre-trained causal LM folder")
    p.add_argument("tuned", help="fine-tuned model folder, or a PEFT adapter folder of the base (merged in memory)")
    p.add_argument("--data", required=True, help=".jsonl/.json/.csv of texts labelled with a pre-training property")
    p.add_argument("--text-field", default="text", help="the texts' column (default text)")
    p.add_argument("--label-field", default="label", help="the property's column (default label)")
    p.add_argument("--units", default="1,4,16", help="how many of the most-changed MLP units to prune, comma "
                   "separated (default 1,4,16; 0: no pruning)")
    p.add_argument("--mode", choices=("zero", "revert"), default="zero", help="pruning: zero the unit's output "
                   "(default, the paper's) or revert the unit to its pre-trained weights")
    p.add_argument("--reverse-steps", type=int, default=0, help="reverse fine-tuning steps on the texts, from the "
                   "fine-tune and from a fresh control (default 0: skipped)")
    p.add_argument("--reverse-lr", type=float, default=1e-3, help="reverse fine-tuning learning rate (default 1e-3)")
    p.add_argument("--probe", choices=("auto", "sklearn", "torch"), default="auto", help="probe fitter (default: "
                   "scikit-learn when installed, else torch)")
    p.add_argument("--seed", type=int, default=0, help="train/test split and reverse fine-tuning seed")
    p.add_argument("-o", "--output", default="probe_prune.json", help="JSON report (a PNG is written beside it when "
                   "matplotlib is installed); default probe_prune.json")
    p.set_defaults(func=cmd_probe_prune)
    return p


def cmd_sweep(args: argparse.Namespace) -> None:
    from . import subsets, sweep

    if (args.train_fraction is None) == (args.k_shot is None):
        from ftplugins.errors import FtpluginsError

        raise FtpluginsError("ftplugins sweep: give --train-fraction 0.01,0.05,0.25,1 or --k-shot 1,3,8 (one of them)")
    scorer = sweep.Scorer(args.heldout, args.heldout_metric, args.evaluator, args.score_file, args.score_key)
    summary = sweep.run_sweep(
        args.config, args.output, scorer,
        fractions=subsets.parse_fractions(args.train_fraction) if args.train_fraction else None,
        shots=subsets.parse_shots(args.k_shot) if args.k_shot else None, label_column=args.label_column,
        seed=args.seed, data=args.data, command=args.command, launcher=args.launcher,
        extra_args=args.train_args, overwrite=args.overwrite)
    curve = ", ".join(f"{p['rows']} rows: {p['score']:.4g}" for p in summary["points"])
    print(f"{summary['metric']} vs data: {curve}; wrote {args.output}/sweep.json")


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="sample-efficiency sweep: train a recipe on nested data subsets, score "
                              "each run, plot score vs data (resumable)")
    p.add_argument("--config", required=True, help="the training recipe (a python -m ftplugins.train --config file)")
    p.add_argument("--train-fraction", help="fractions of the training rows, e.g. 0.01,0.05,0.25,1 (nested, seeded)")
    p.add_argument("--k-shot", help="examples per class, e.g. 1,3,8 (nested, seeded; needs --label-column)")
    p.add_argument("--label-column", default="label", help="the class column for --k-shot (default label)")
    p.add_argument("-o", "--output", required=True, help="the sweep folder (points/, sweep.json, sweep.png); "
                   "running again resumes it")
    p.add_argument("--heldout", help="held-out .jsonl scored on each saved model (see --heldout-metric)")
    p.add_argument("--heldout-metric", choices=("loss", "exact_match"), default="loss",
                   help="loss: minus the mean token loss of 'text' rows (default); exact_match: prompt/target rows")
    p.add_argument("--evaluator", help="package.module:function scoring a model: func(model, tokenizer) -> float")
    p.add_argument("--score-file", help="a JSON file a plugin of the recipe writes into the run (e.g. mbpp_eval.json)")
    p.add_argument("--score-key", help="the metric to read from --score-file (e.g. pass@1)")
    p.add_argument("--data", help="take the subsets of this .jsonl/.json file instead of the recipe's train split")
    p.add_argument("--seed", type=int, default=0, help="the subsets' seed (default 0)")
    p.add_argument("--command", choices=("sft", "dpo", "grpo"), default="sft", help="the trainer (default sft)")
    add_training_run_arguments(p, "point")
    p.set_defaults(func=cmd_sweep)
    return p


def add_training_run_arguments(p: argparse.ArgumentParser, unit: str) -> None:
    """--launcher, --overwrite and the training arguments after --: a tool that trains a recipe once per ``unit``
    (a sweep's point, a locating candidate) in subprocesses."""
    p.add_argument("--launcher", help=f"run each {unit} under this command instead of the current python, e.g. "
                   "'accelerate launch --num_processes 2'")
    p.add_argument("--overwrite", action="store_true", help="start over when --output holds another run")
    p.add_argument("train_args", nargs="*", help=f"after --: more training arguments for every {unit} "
                   "(e.g. -- --max_steps 50)")
