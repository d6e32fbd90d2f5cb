"""``ftplugins delta apply|revert|compose``: sparse deltas on saved models, from the command line.

* ``ftplugins delta apply BASE_DIR DELTA [DELTA ...] -o OUT_DIR`` writes BASE + ΣΔ (the deltas are
  composed first, so their order does not matter; LT-SFT's language + task deltas).
* ``ftplugins delta revert MODEL_DIR DELTA [DELTA ...] -o OUT_DIR`` writes MODEL - ΣΔ.
* ``ftplugins delta compose DELTA DELTA [...] -o OUT.safetensors`` writes one delta, the sum.

Model folders are what ``save_pretrained`` writes (``*.safetensors`` + config + tokenizer); the
weights are edited in the files directly, one shard at a time, and the output is written atomically.
"""

from __future__ import annotations

import argparse


def cmd_apply(args: argparse.Namespace, scale: float = 1.0) -> None:
    from .delta import apply_to_model_dir, load_delta

    deltas = [load_delta(path) for path in args.deltas]
    changed = apply_to_model_dir(args.model, deltas, args.output, scale=scale)
    verb = "added" if scale > 0 else "subtracted"
    nnz = sum(d.nnz for d in deltas)
    print(f"{verb} {len(deltas)} delta(s) ({nnz} entries, {len(changed)} tensors); wrote {args.output}")


def cmd_revert(args: argparse.Namespace) -> None:
    cmd_apply(args, scale=-1.0)


def cmd_compose(args: argparse.Namespace) -> None:
    from .delta import compose_deltas, load_delta, save_delta

    composed = compose_deltas(load_delta(path) for path in args.deltas)
    save_delta(composed, args.output)
    print(f"composed {len(args.deltas)} deltas into {args.output} ({composed.nnz} entries, {len(composed)} tensors)")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``delta`` (with ``apply``, ``revert``, ``compose``) to the ``ftplugins`` command's subparsers."""
    parser = subparsers.add_parser("delta", help="apply, revert or compose sparse deltas (sparse fine-tuning output)")
    sub = parser.add_subparsers(dest="delta_command", required=True)
    p = sub.add_parser("apply", help="base model folder + delta files -> model folder with the deltas added")
    p.add_argument("model", help="base model folder (save_pretrained output)")
    p.add_argument("deltas", nargs="+", help="sparse delta files (sparse_delta.safetensors)")
    p.add_argument("-o", "--output", required=True, help="output model folder (may equal the base folder)")
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("revert", help="model folder + delta files -> model folder with the deltas subtracted")
    p.add_argument("model", help="model folder the deltas were applied to")
    p.add_argument("deltas", nargs="+", help="sparse delta files")
    p.add_argument("-o", "--output", required=True, help="output model folder")
    p.set_defaults(func=cmd_revert)
    p = sub.add_parser("compose", help="several delta files -> one delta file (their sum)")
    p.add_argument("deltas", nargs="+", help="sparse delta files")
    p.add_argument("-o", "--output", required=True, help="output delta file")
    p.set_defaults(func=cmd_compose)
    return parser
