"""``ftplugins select METHOD --data train.jsonl --budget N -o selected.jsonl [options]``: selection offline.

Writes the chosen rows (JSON lines, in pool order), ``selected.report.json`` beside them (budget, counts per
cluster / stratum, seed, cache keys) and, with matplotlib, ``selected.scores.png``. The method's options are its
plugin's without the prefix (``--clusters 64`` for ``select_kmeans_clusters``); ``--model`` loads the causal LM
that perplexity, ``encoder model`` and influence need. An interrupted run (Ctrl-C) keeps every finished cache
chunk: the same command resumes and writes the same result.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses


def _run(args: argparse.Namespace) -> None:
    from ftplugins.errors import FtpluginsError

    from . import select
    from .methods import resolve

    plugin = resolve(args.method)
    prefix = plugin.name + "_"
    options = {f.name.removeprefix(prefix): getattr(args, f.name.removeprefix(prefix))
               for f in plugin.option_fields()}
    model = tokenizer = None
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    try:
        with no_library_progress_bars() if args.quiet else contextlib.nullcontext():
            selection = select(plugin, args.data, output=args.output, model=model, tokenizer=tokenizer,
                               show_progress=not args.quiet, **options)
    except KeyboardInterrupt:
        raise FtpluginsError(
            "interrupted; finished embedding/score chunks are kept in the cache (--cache_dir): run the same command "
            "again to resume where it stopped."
        ) from None
    report = selection.report
    print(f"{plugin.name}: kept {report['selected']} of {report['pool_rows']} rows; wrote {args.output} "
          f"and its report")


@contextlib.contextmanager
def no_library_progress_bars():
    """``--quiet``: datasets' and transformers' own bars (file loading, weight loading) off too, then restored."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``select`` (one sub-command per built-in method) to the ``ftplugins`` command."""
    from .methods import BUILTIN, resolve

    parser = subparsers.add_parser("select", help="select training rows offline (kmeans, ot, influence)")
    sub = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in BUILTIN:
        plugin = resolve(name)
        short = name.removeprefix("select_")
        p = sub.add_parser(short, aliases=[name], help=plugin.summary, description=plugin.summary)
        p.add_argument("--data", required=True,
                       help="the pool: .jsonl/.json/.csv/.parquet, save_to_disk folder or Hub id")
        p.add_argument("-o", "--output", required=True, help="where the chosen rows go (JSON lines)")
        p.add_argument("--model", default="", help="causal LM path/id (perplexity, encoder 'model', influence)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        for field in plugin.option_fields():
            flag = field.name.removeprefix(plugin.name + "_")
            default = field.default if field.default is not dataclasses.MISSING else None
            p.add_argument(f"--{flag}", type=field.type, default=default,
                           help=f"{field.metadata.get('help', '')} (default {default!r})")
        p.set_defaults(func=_run, method=name)
    return parser
