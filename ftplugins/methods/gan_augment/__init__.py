"""gan_augment: MhERGAN-style GAN augmentation of small tabular datasets (*Enhancing Few-Shot Learning with
Integrated Data and GAN Model Approaches*, 2024; built from the abstract: its details and code are not public).

A class-conditional GAN with an ensemble of discriminators is trained on the real rows; synthetic rows are drawn by
Metropolis-Hastings over the calibrated ensemble's scores (MH-GAN, :mod:`.mh`), and added with a marker column
(True on synthetic rows). The choices made where the paper is silent are listed in :mod:`.gan`. Small images too
(``--gan_augment_image_column``): the same GAN over their flattened pixels (:mod:`.images`).

* Plugin: ``--plugins gan_augment`` augments the **train** split in ``transform_dataset``; eval splits are never
  augmented (one that carries marked synthetic rows is refused). The report goes to
  OUTPUT_DIR/gan_augment_report.json.
* Offline: ``ftplugins augment gan --data rows.csv -o augmented.jsonl`` (+ ``augmented.report.json``), atomically.
* Python: ``ftplugins.methods.gan_augment.augment(dataset, GanAugmentOptions(...))``.
"""

from __future__ import annotations

import os

from ftplugins.distributed_reasons import untested
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import GanAugmentOptions

REPORT = "gan_augment_report.json"


def augment(dataset, options=None):
    """``(augmented dataset, report)``; see :func:`.tabular.augment` (imports torch lazily)."""
    from .tabular import augment as run

    return run(dataset, options or GanAugmentOptions())


class GanAugmentPlugin(Plugin):
    name = "gan_augment"
    summary = ("MhERGAN-style augmentation: a conditional GAN with a discriminator ensemble, rows drawn by "
               "Metropolis-Hastings over its calibrated scores, added (marked) to the train split only")
    paper = "Enhancing Few-Shot Learning with Integrated Data and GAN Model Approaches (MhERGAN), 2024"
    options = GanAugmentOptions
    # Tabular rows for a transformers.Trainer model (TRL trainers are refused in validate: they read text); a
    # diffusion denoiser's images are not tabular rows.
    trainers = ("Trainer",)
    # Every process trains the same GAN on the CPU from the same seed, so every rank adds the same rows.
    distributed = ("single", "ddp")
    distributed_refusals = {mode: untested(mode, "only the train rows change, the same on every rank, before the model "
                                                 "is sharded") for mode in ("fsdp", "deepspeed")}

    def add_commands(self, subparsers):
        """``ftplugins augment gan``."""
        from .cli import add_subparser

        add_subparser(subparsers)

    def input_columns(self, options, split):
        opts = options or GanAugmentOptions()
        if split != "train":
            return []
        if opts.gan_augment_image_column:
            return [opts.gan_augment_label_column, opts.gan_augment_image_column]
        return [opts.gan_augment_label_column, *opts.feature_columns()]

    @hookimpl
    def validate(self, run):
        # TRL's trainers tokenize text rows; numeric tabular rows go to a transformers.Trainer model.
        trl = [c.__name__ for c in (run.trainer_cls.__mro__ if run.trainer_cls else ()) if
               c.__module__.startswith("trl.")]
        if trl:
            raise FtpluginsError(f"plugin gan_augment augments numeric tabular rows for a transformers.Trainer model, "
                                 f"not {trl[0]} (it reads text); compose it over transformers.Trainer.")

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        opts = run.options_for(self) or GanAugmentOptions()
        if dataset is None:
            return None
        if split != "train":
            _refuse_synthetic_rows(dataset, opts, split)
            return None  # evaluation data stays real: unchanged
        augmented, report = augment(dataset, opts)
        run.state[self.name] = report
        args = run.args
        if args is not None and getattr(args, "output_dir", None) and int(getattr(args, "process_index", 0) or 0) == 0:
            from .report import write_json

            write_json(report, os.path.join(args.output_dir, REPORT))
        return augmented


def _refuse_synthetic_rows(dataset, opts, split):
    marker = opts.gan_augment_marker_column
    columns = getattr(dataset, "column_names", None) or []
    if marker in columns and any(dataset[marker]):
        raise FtpluginsError(f"the {split!r} split has rows marked synthetic in {marker!r}: evaluation data must be "
                             "real; drop those rows (dataset.filter(lambda r: not r[" + repr(marker) + "])).")


plugin = GanAugmentPlugin()
