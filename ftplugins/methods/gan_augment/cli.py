"""``ftplugins augment gan --data rows.csv -o augmented.jsonl [options]``: GAN augmentation offline.

Writes every real row (marker False) and the synthetic rows (marker True) as JSON lines, and
``augmented.report.json`` beside them. ``--images FOLDER`` (one subfolder per class) instead writes an image
folder of the same layout with the synthetic images added (:mod:`.imagefolder`). Options are the plugin's without
the prefix (``--ratio 2`` for ``gan_augment_ratio``).
"""

from __future__ import annotations

import argparse
import dataclasses


def _run(args: argparse.Namespace) -> None:
    from ftplugins.data.source import load_pool
    from ftplugins.errors import OptionError

    from . import plugin
    from .tabular import augment
    from .options import GanAugmentOptions
    from .report import report_path, write_rows_and_report

    prefix = plugin.name + "_"
    values = {f.name: getattr(args, f.name.removeprefix(prefix)) for f in plugin.option_fields()}
    if args.images:
        values.update(gan_augment_image_column="image", gan_augment_label_column="label")
    try:
        opts = GanAugmentOptions(**values)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if args.images:
        from .imagefolder import REPORT, augment_image_folder

        report = augment_image_folder(args.images, args.output, opts)
        print(f"gan_augment: {report['real_rows']} real + {report['synthetic_rows']} synthetic images "
              f"({report['sampler']}); wrote {args.output}/ (one folder per class, metadata.jsonl marks the "
              f"synthetic ones, {REPORT})")
        return
    dataset = load_pool(args.data)
    augmented, report = augment(dataset, opts, what=f"--data {args.data}")
    write_rows_and_report(augmented, report, args.output)
    print(f"gan_augment: {report['real_rows']} real + {report['synthetic_rows']} synthetic rows "
          f"({report['sampler']}); wrote {args.output} and {report_path(args.output)}")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``augment`` with its ``gan`` method to the ``ftplugins`` command."""
    from . import plugin

    parser = subparsers.add_parser("augment", help="add synthetic labelled rows to a dataset offline (gan)")
    sub = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    p = sub.add_parser("gan", help=plugin.summary, description=plugin.summary)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="the real rows: .jsonl/.json/.csv/.parquet, save_to_disk folder")
    source.add_argument("--images", help="an image folder, FOLDER/<class>/<image files> (small images of one size "
                                         "and mode): -o is then a folder of the same layout with the synthetic "
                                         "images added, metadata.jsonl marking them")
    p.add_argument("-o", "--output", required=True, help="where the real + synthetic rows go (JSON lines; with "
                                                         "--images a folder)")
    for field in plugin.option_fields():
        flag = field.name.removeprefix(plugin.name + "_")
        p.add_argument(f"--{flag}", type=field.type, default=field.default,
                       help=f"{field.metadata.get('help', '')} (default {field.default!r})")
    p.set_defaults(func=_run)
    return parser
