"""``ftplugins locft-locate``: the paper's sweep of tuning locations for your model (:mod:`.locate`)."""

from __future__ import annotations

import argparse


def add_subparser(subparsers) -> argparse.ArgumentParser:
    from ftplugins.tools.cli import add_training_run_arguments

    p = subparsers.add_parser("locft-locate", help="locate LocFT-BF's module for a model: train a locft recipe on "
                              "validation edits with each candidate module, keep the best CounterFact score "
                              "(resumable)")
    p.add_argument("--config", required=True, help="a locft training recipe (plugins: [locft])")
    p.add_argument("-o", "--output", required=True, help="the folder (candidates/, locate.json); running again "
                   "resumes it")
    p.add_argument("--candidates", help="comma-separated exact module names (default: every layer's mlp.down_proj, "
                   "then every whole layer)")
    p.add_argument("--edits", help="validation edits, a .jsonl/.json file (default: the recipe's train split)")
    p.add_argument("--rows", type=int, help="train and score on this many edits, drawn with --seed (default all)")
    p.add_argument("--seed", type=int, default=0, help="the draw of --rows (default 0)")
    p.add_argument("--keep-runs", action="store_true", help="keep each candidate's trained model (deleted once "
                   "scored by default)")
    add_training_run_arguments(p, "candidate")
    p.set_defaults(func=cmd_locate)
    return p


def cmd_locate(args: argparse.Namespace) -> None:
    from .locate import locate

    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
    summary = locate(args.config, args.output, candidates=candidates, edits=args.edits, rows=args.rows,
                     seed=args.seed, launcher=args.launcher, extra_args=args.train_args, keep_runs=args.keep_runs,
                     overwrite=args.overwrite)
    print(f"located: {summary['located']} (score {max(r['score'] for r in summary['results']):.4f} of "
          f"{len(summary['results'])} candidates); train with --locft_modules {summary['located']}; "
          f"wrote {args.output}/locate.json")
