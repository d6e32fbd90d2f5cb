"""``ftplugins generate``: decode prompts with the aligned-model prefix defence.

``--model`` is the fine-tuned model (or the base model when ``--adapter`` is given); ``--aligned`` the
aligned model that writes the first ``--k`` tokens. With ``--adapter`` and no ``--aligned`` the prefix is
written by the base model with the adapter disabled. ``--forced`` replaces the aligned prefix with a fixed
string. ``--k 0`` is plain decoding with the fine-tuned model.
"""

from __future__ import annotations

import argparse
import json

from ftplugins.errors import FtpluginsError

from .generation import DEFAULT_MAX_NEW_TOKENS


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="decode with the aligned-model prefix defence (aligned_prefix)")
    p.add_argument("--model", required=True, help="fine-tuned model folder (the base model with --adapter)")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder loaded onto --model")
    p.add_argument("--aligned", default=None, help="aligned model folder that writes the prefix; default with "
                   "--adapter: the base model (adapter disabled)")
    p.add_argument("--k", type=int, default=15, help="prefix tokens written by the aligned model (paper: 15)")
    p.add_argument("--forced", default="", help="a fixed prefix string instead of the aligned model's tokens")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="budget of new tokens, prefix included")
    p.add_argument("--json", action="store_true", help="print a JSON list of {prompt, response}")
    p.set_defaults(func=cmd_generate)
    return p


def cmd_generate(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplugins.composition import check_model_path

    from .generation import generate

    for path in (args.model, args.aligned):
        if path is not None:
            check_model_path(path)
    if args.adapter is None and args.aligned is None and not args.forced and args.k > 0:
        raise FtpluginsError(
            "ftplugins generate: no aligned model to write the prefix; pass --aligned ALIGNED_DIR, or --adapter "
            "ADAPTER_DIR (the prefix is then written by --model with the adapter disabled), or --forced TEXT, "
            "or --k 0 for plain decoding."
        )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.adapter is not None:
        from ftplugins.peft_types import load_adapter

        model = load_adapter(model, args.adapter)
    model.eval()
    aligned = AutoModelForCausalLM.from_pretrained(args.aligned).eval() if args.aligned else None
    responses = generate(aligned, model, tokenizer, args.prompt, k=args.k, forced=args.forced,
                         max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps([{"prompt": p, "response": r} for p, r in zip(args.prompt, responses)], indent=2))
        return
    for prompt, response in zip(args.prompt, responses):
        print(f"### {prompt}\n{response}")
