"""``ftplugins delta apply|revert|compose``: sparse deltas on saved models, from the command line.

* ``ftplugins delta apply BASE_DIR DELTA [DELTA ...] -o OUT_DIR`` writes BASE + ΣΔ (the deltas are
  composed first, so their order does not matter; LT-SFT's language + task deltas).
* ``ftplugins delta revert MODEL_DIR DELTA [DELTA ...] -o OUT_DIR`` writes MODEL - ΣΔ.
* ``ftplugins delta compose DELTA DELTA [...] -o OUT.safetensors`` writes one delta, the sum.

Model folders are what ``save_pretrained`` writes (``*.safetensors`` + config + tokenizer); the
weights are edited in the files directly, one shard at a time. The output is staged inside its own
folder and moved into place; an output folder must be new or empty unless ``--overwrite`` (it then
holds exactly the new model: no stale shards). Each delta's record of its base is checked: a delta is
not applied to another model, nor twice (``--no-base-check`` skips this, e.g. for an LT-SFT task delta
trained on base + a language delta and applied with another language's delta).
"""

from __future__ import annotations

import argparse
import os


def cmd_apply(args: argparse.Namespace, scale: float = 1.0) -> None:
    from .delta import apply_to_model_dir, check_output_folder, load_delta

    check_output_folder(args.output, args.overwrite)  # before reading any delta: the cheap mistake first
    deltas = [load_delta(path) for path in args.deltas]
    changed = apply_to_model_dir(args.model, deltas, args.output, scale=scale, overwrite=args.overwrite,
                                 check_base=not args.no_base_check, sources=list(args.deltas))
    verb = "added" if scale > 0 else "subtracted"
    nnz = sum(d.nnz for d in deltas)
    print(f"{verb} {len(deltas)} delta(s) ({nnz} entries, {len(changed)} tensors); wrote {args.output}")


def cmd_revert(args: argparse.Namespace) -> None:
    cmd_apply(args, scale=-1.0)


def cmd_compose(args: argparse.Namespace) -> None:
    from ftplugins.errors import FtpluginsError

    from .delta import compose_deltas, load_delta, save_delta

    if os.path.isdir(args.output):
        raise FtpluginsError(f"output {args.output!r} is a folder; expected a file path for the composed delta, e.g. "
                             f"{os.path.join(args.output, 'composed_delta.safetensors')}")
    if os.path.exists(args.output) and not args.overwrite:
        raise FtpluginsError(f"output file {args.output!r} exists; choose another name, or pass --overwrite")
    composed = compose_deltas(load_delta(path) for path in args.deltas)
    save_delta(composed, args.output)
    print(f"composed {len(args.deltas)} deltas into {args.output} ({composed.nnz} entries, {len(composed)} tensors)")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``delta`` (with ``apply``, ``revert``, ``compose``) to the ``ftplugins`` command's subparsers."""
    parser = subparsers.add_parser("delta", help="apply, revert or compose sparse deltas (sparse fine-tuning output)")
    sub = parser.add_subparsers(dest="delta_command", required=True)
    overwrite = "replace the content of a non-empty output folder (may be the model folder itself)"
    no_check = "do not check that the model is the one the delta was made from (its recorded base)"
    p = sub.add_parser("apply", help="base model folder + delta files -> model folder with the deltas added")
    p.add_argument("model", help="base model folder (save_pretrained output)")
    p.add_argument("deltas", nargs="+", help="sparse delta files (sparse_delta.safetensors)")
    p.add_argument("-o", "--output", required=True, help="output model folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--no-base-check", action="store_true", help=no_check)
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("revert", help="model folder + delta files -> model folder with the deltas subtracted")
    p.add_argument("model", help="model folder the deltas were applied to")
    p.add_argument("deltas", nargs="+", help="sparse delta files")
    p.add_argument("-o", "--output", required=True, help="output model folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--no-base-check", action="store_true", help=no_check)
    p.set_defaults(func=cmd_revert)
    p = sub.add_parser("compose", help="several delta files -> one delta file (their sum)")
    p.add_argument("deltas", nargs="+", help="sparse delta files")
    p.add_argument("-o", "--output", required=True, help="output delta file (a new file, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_compose)
    return parser
