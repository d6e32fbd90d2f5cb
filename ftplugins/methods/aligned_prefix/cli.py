"""``ftplugins generate``: decode prompts with the aligned-model prefix defence.

``--model`` is the fine-tuned model (or the base model when ``--adapter`` is given); ``--aligned`` the
aligned model that writes the first ``--k`` tokens. With ``--adapter`` and no ``--aligned`` the prefix is
written by the base model with the adapter disabled. ``--forced`` replaces the aligned prefix with a fixed
string. ``--k 0`` is plain decoding with the fine-tuned model.

``--contrastive`` decodes instead with contrastive generative exploration (CGE, :mod:`ftplugins.tools.contrastive`):
tokens the fine-tuned model finds likely (α-plausibility head, ``--alpha``) scored by how much more likely they are
than under the base model (``--base``, or ``--model`` with the ``--adapter`` disabled).
"""

from __future__ import annotations

import argparse
import json

from ftplugins.errors import FtpluginsError

from .generation import DEFAULT_MAX_NEW_TOKENS


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="decode with the aligned-model prefix defence (aligned_prefix) or, "
                              "with --contrastive, contrastive generative exploration (CGE)")
    p.add_argument("--model", required=True, help="fine-tuned model folder (the base model with --adapter)")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder loaded onto --model")
    p.add_argument("--aligned", default=None, help="aligned model folder that writes the prefix; default with "
                   "--adapter: the base model (adapter disabled)")
    p.add_argument("--k", type=int, default=None, help="prefix tokens written by the aligned model (paper: 15)")
    p.add_argument("--forced", default="", help="a fixed prefix string instead of the aligned model's tokens")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="budget of new tokens, prefix included")
    p.add_argument("--json", action="store_true", help="print a JSON list of {prompt, response}")
    cge = p.add_argument_group("contrastive generative exploration (CGE)")
    cge.add_argument("--contrastive", action="store_true", help="decode with log p_FT - gamma*log p_base inside the "
                     "fine-tuned model's alpha-plausibility head instead of the aligned-prefix defence")
    cge.add_argument("--base", default=None, help="the base (pre-trained) model folder; default with --adapter: "
                     "--model with the adapter disabled")
    cge.add_argument("--alpha", type=float, default=0.1, help="plausibility cutoff (reference code: 0.1)")
    cge.add_argument("--gamma", type=float, default=1.0, help="weight of the base model's log-probability (1.0)")
    cge.add_argument("--num_beams", type=int, default=1, help="beams over the contrastive scores (reference: 4)")
    p.set_defaults(func=cmd_generate)
    return p


def cmd_generate(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplugins.composition import check_model_path

    from .generation import generate

    for path in (args.model, args.aligned, args.base):
        if path is not None:
            check_model_path(path)
    if args.contrastive:
        cmd_contrastive(args)
        return
    if args.base is not None:
        raise FtpluginsError("ftplugins generate: --base is the base model of --contrastive decoding; add "
                             "--contrastive, or pass the aligned model as --aligned.")
    args.k = 15 if args.k is None else args.k
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


def cmd_contrastive(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplugins.tools.contrastive import contrastive_generate

    if args.aligned is not None or args.forced or args.k is not None:
        raise FtpluginsError("ftplugins generate --contrastive: --aligned, --forced and --k belong to the "
                             "aligned-prefix defence; drop them (the base model is --base, or --model with the "
                             "--adapter disabled).")
    if args.base is None and args.adapter is None:
        raise FtpluginsError("ftplugins generate --contrastive: no base model to contrast with; pass --base BASE_DIR, "
                             "or --adapter ADAPTER_DIR (the base is then --model with the adapter disabled).")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.adapter is not None:
        from ftplugins.peft_types import load_adapter

        model = load_adapter(model, args.adapter)
    base = base_tokenizer = None
    if args.base is not None:
        base_tokenizer = AutoTokenizer.from_pretrained(args.base)
        base = AutoModelForCausalLM.from_pretrained(args.base).eval()
    responses = contrastive_generate(model.eval(), tokenizer, args.prompt, base, base_tokenizer=base_tokenizer,
                                     alpha=args.alpha, gamma=args.gamma, max_new_tokens=args.max_new_tokens,
                                     num_beams=args.num_beams)
    if args.json:
        print(json.dumps([{"prompt": p, "response": r} for p, r in zip(args.prompt, responses)], indent=2))
        return
    for prompt, response in zip(args.prompt, responses):
        print(f"### {prompt}\n{response}")
