"""``ftplugins eval HARNESS ...`` (also ``python -m ftplugins.eval HARNESS ...``): the evaluation harnesses.

* ``mbpp``: MBPP-format pass@k (:mod:`.mbpp`);
* ``infusion``: knowledge infusion in the FineTuneBench format (:mod:`.infusion`);
* ``conjugate``: conjugate prompting, a fine-tuned model and its base on original vs transformed prompts
  (:mod:`ftplugins.tools.conjugate`).

Each prints one JSON object (metrics, config, per-task or per-question records) or writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluation harnesses: mbpp (pass@k), infusion (FineTuneBench format), "
                              "conjugate prompting")
    harnesses = p.add_subparsers(dest="harness", required=True)

    m = harnesses.add_parser("mbpp", help="MBPP-format pass@k with sandboxed execution")
    _model_args(m)
    m.add_argument("--data", default=None, help="MBPP-format .jsonl/.json/.csv (text, code, test_list); default: "
                   "the tiny synthetic set shipped with ftplugins")
    m.add_argument("--n", type=int, default=1, help="samples per task")
    m.add_argument("--k", default="1", help="comma-separated k of pass@k, each <= n")
    m.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for n=1, else 0.8")
    m.add_argument("--max_new_tokens", type=int, default=256)
    m.add_argument("--batch_size", type=int, default=8, help="tasks per generate call")
    m.add_argument("--shots", default=None, help="comma-separated task ids used as prompt examples; default: MBPP's "
                   "2,3,4 when present, else none; 'none' for zero-shot")
    m.add_argument("--timeout", type=float, default=10.0, help="seconds each sample may run")
    m.add_argument("--workers", type=int, default=1, help="samples executed in parallel")
    m.set_defaults(func=cmd_mbpp)

    i = harnesses.add_parser("infusion", help="knowledge infusion (FineTuneBench format): accuracy per question kind")
    _model_args(i)
    i.add_argument("--data", default=None, help="CSV with prompt, answer, kind; or KIND=FILE.csv (repeatable) for "
                   "FineTuneBench's one-file-per-kind CSVs (id, prompt, answer); default: the tiny synthetic set")
    i.add_argument("--extra", action="append", default=[], metavar="KIND=FILE", help="another KIND=FILE.csv")
    i.add_argument("--judge", default="auto", help="auto (numeric for number answers, else normalized; default), "
                   "normalized, numeric, exact, or pkg.mod:func")
    i.add_argument("--template", default=None, help="question prompt; {prompt} is replaced (default: "
                   "'Question: {prompt}\\nAnswer:')")
    i.add_argument("--max_new_tokens", type=int, default=32)
    i.add_argument("--batch_size", type=int, default=16)
    i.set_defaults(func=cmd_infusion)

    t = harnesses.add_parser("infusion-train", help="write the memorization questions as prompt/completion JSONL "
                             "(the rows to fine-tune on, in the prompt format `eval infusion` asks them)")
    t.add_argument("out", help="output .jsonl")
    t.add_argument("--data", default=None, help="as for `eval infusion`")
    t.add_argument("--extra", action="append", default=[], metavar="KIND=FILE")
    t.add_argument("--kinds", default="memorization", help="comma-separated kinds to train on")
    t.add_argument("--template", default=None)
    t.set_defaults(func=cmd_infusion_train)
    c = harnesses.add_parser("conjugate", help="conjugate prompting: accuracy of a fine-tuned model and its base on "
                             "original vs transformed prompts (cipher, leetspeak, pig latin, synthetic language)")
    _model_args(c)
    c.add_argument("--base", default=None, help="the base (pre-trained) model folder; default with --adapter: "
                   "--model with the adapter disabled; without either, only --model is evaluated")
    c.add_argument("--data", required=True, help=".jsonl/.json/.csv with prompt and answer columns")
    c.add_argument("--transforms", default="cipher,leetspeak,pig_latin,language",
                   help="comma-separated transforms (identity is always evaluated)")
    c.add_argument("--judge", default="auto", help="auto (default), normalized, numeric, exact, or pkg.mod:func")
    c.add_argument("--template", default="{prompt}", help="the prompt around each question; {prompt} is replaced")
    c.add_argument("--max_new_tokens", type=int, default=32)
    c.add_argument("--batch_size", type=int, default=16)
    c.add_argument("--seed", type=int, default=0, help="seed of the synthetic language")
    c.set_defaults(func=cmd_conjugate)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (the base model with --adapter)")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder loaded onto --model")
    p.add_argument("--out", default=None, help="write the JSON result here instead of printing it")


def load_model(args: argparse.Namespace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplugins.composition import check_model_path

    check_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.adapter is not None:
        from ftplugins.peft_types import load_adapter

        model = load_adapter(model, args.adapter)
    return model.eval(), tokenizer


def emit(result: dict, out: str | None) -> None:
    if out is None:
        print(json.dumps(result, indent=2))
        return
    import os

    from ftplugins.atomic import staged_dir

    folder, name = os.path.split(os.path.abspath(out))
    with staged_dir(folder) as tmp, open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {out}: {json.dumps(result['metrics'])}")


def cmd_mbpp(args: argparse.Namespace) -> None:
    from .mbpp import TINY, evaluate_mbpp, load_mbpp
    from .report import parse_ks

    data = args.data or TINY
    load_mbpp(data)  # bad data fails before the model loads
    ks = parse_ks(args.k, "--k")
    shots = None if args.shots is None else (
        [] if args.shots.strip().lower() == "none" else [int(s) if s.strip().isdigit() else s.strip()
                                                         for s in args.shots.split(",") if s.strip()])
    model, tokenizer = load_model(args)
    result = evaluate_mbpp(model, tokenizer, data, n=args.n, ks=ks, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, shot_ids=shots,
                           timeout=args.timeout, workers=args.workers)
    emit(result, args.out)


def cmd_infusion(args: argparse.Namespace) -> None:
    from .infusion import TINY, evaluate_infusion, load_facts

    sources = [s for s in [args.data, *args.extra] if s] or [TINY]
    rows = load_facts(sources)  # bad data fails before the model loads
    from .infusion import TEMPLATE, resolve

    resolve(args.judge, option="--judge")  # a misspelled judge fails before the model loads
    model, tokenizer = load_model(args)
    result = evaluate_infusion(model, tokenizer, rows, judge=args.judge, template=args.template or TEMPLATE,
                               max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    emit(result, args.out)


def cmd_infusion_train(args: argparse.Namespace) -> None:
    import os

    from ftplugins.atomic import staged_dir

    from .infusion import TEMPLATE, TINY, load_facts, training_rows

    facts = load_facts([s for s in [args.data, *args.extra] if s] or [TINY])
    rows = training_rows(facts, [k.strip() for k in args.kinds.split(",") if k.strip()], args.template or TEMPLATE)
    folder, name = os.path.split(os.path.abspath(args.out))
    with staged_dir(folder) as tmp, open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"wrote {len(rows)} rows to {args.out}")


def cmd_conjugate(args: argparse.Namespace) -> None:
    from ftplugins.tools.conjugate import conjugate_eval, get_transform

    from .infusion import resolve
    from .rows import load_rows

    rows = load_rows(args.data, ("prompt", "answer"), what="conjugate")
    names = [t.strip() for t in args.transforms.split(",") if t.strip()]
    for name in names:
        get_transform(name, ["probe"])  # a misspelled transform fails before the models load
    resolve(args.judge, option="--judge")
    model, tokenizer = load_model(args)
    models = {"finetuned": model}
    if args.base is not None:
        from transformers import AutoModelForCausalLM

        from ftplugins.composition import check_model_path
        from ftplugins.tools.contrastive import check_same_tokenizer

        check_model_path(args.base)
        from transformers import AutoTokenizer

        check_same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(args.base), "conjugate")
        models["base"] = AutoModelForCausalLM.from_pretrained(args.base).eval()
    elif args.adapter is not None:
        from ftplugins.tools.contrastive import AdapterDisabled

        models["base"] = AdapterDisabled(model)
    result = conjugate_eval(models, tokenizer, rows, names, judge=args.judge, template=args.template,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    emit(result, args.out)


def main(argv=None) -> None:
    from ftplugins.cli_errors import exit_on_user_error

    parser = argparse.ArgumentParser(prog="ftplugins")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subparser(sub)
    argv = ["eval", *(argv if argv is not None else __import__("sys").argv[1:])]
    args = parser.parse_args(argv)
    exit_on_user_error(args.func)(args)
