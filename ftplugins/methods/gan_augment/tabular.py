"""Tabular rows in, real + synthetic rows out: column checks, the GAN, and the marker column."""

from __future__ import annotations

from typing import Any

import numpy as np

from ftplugins.errors import DatasetColumnsError, FtpluginsError

from .options import GanAugmentOptions

NUMERIC_KINDS = ("int", "uint", "float")


def feature_columns(dataset: Any, opts: GanAugmentOptions, what: str) -> list[str]:
    """The named feature columns, checked numeric; default every numeric column but the label and the marker."""
    from datasets import Value

    check_label_and_marker(dataset, opts, what)
    features = dataset.features
    label = opts.gan_augment_label_column

    def numeric(name):
        kind = features[name]
        return isinstance(kind, Value) and kind.dtype.rstrip("0123456789") in NUMERIC_KINDS

    named = opts.feature_columns()
    if not named:
        named = [c for c in features if c != label and numeric(c)]
        if not named:
            raise DatasetColumnsError(f"{what}: no numeric feature columns besides {label!r} (columns: "
                                      f"{', '.join(features)}); the GAN models numeric tabular features (or name an "
                                      "image column with --gan_augment_image_column).")
    for name in named:
        if name not in features:
            raise DatasetColumnsError(f"--gan_augment_feature_columns: {name!r} is not a column of {what} (columns: "
                                      f"{', '.join(features)}).")
        if name == label or not numeric(name):
            raise DatasetColumnsError(f"--gan_augment_feature_columns: {name!r} is {features[name]!r}, expected a "
                                      "numeric column other than the label.")
    return named


def check_label_and_marker(dataset: Any, opts: GanAugmentOptions, what: str) -> None:
    features = dataset.features
    label, marker = opts.gan_augment_label_column, opts.gan_augment_marker_column
    if label not in features:
        raise DatasetColumnsError(f"{what}: no label column {label!r} (columns: {', '.join(features)}); name it with "
                                  "--gan_augment_label_column.")
    if marker in features:
        raise DatasetColumnsError(f"{what} already has the marker column {marker!r}: it looks augmented already; "
                                  "augment the real rows only, or pick another --gan_augment_marker_column.")


def augment(dataset: Any, opts: GanAugmentOptions, what: str = "the train split") -> tuple[Any, dict]:
    """The real rows (marker False) followed by the synthetic rows (marker True), and a report."""
    from datasets import Dataset

    from .gan import fit, sample

    label = opts.gan_augment_label_column
    image_column, layout = opts.gan_augment_image_column, None
    if image_column:
        from .images import image_matrix

        check_label_and_marker(dataset, opts, what)
        columns = [image_column]
        x, layout = image_matrix(dataset, image_column, what)
    else:
        columns = feature_columns(dataset, opts, what)
        values = [dataset[c] for c in columns]
        if any(v is None for col in values for v in col):
            raise FtpluginsError(f"{what}: empty (null) values in the feature columns; fill or drop those rows first.")
        x = np.asarray(values, dtype=np.float64).T.reshape(len(dataset), len(columns))
        if not np.isfinite(x).all():
            raise FtpluginsError(f"{what}: non-finite values (NaN/inf) in the feature columns; fill or drop those "
                                 "rows.")
    raw_labels = dataset[label]
    if any(v is None for v in raw_labels):
        raise FtpluginsError(f"{what}: rows without a {label!r}; the GAN is conditioned on each row's class.")
    classes = sorted(set(raw_labels), key=repr)
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[v] for v in raw_labels], dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    per_class = [int(round(opts.gan_augment_ratio * n)) for n in counts]
    gan = fit(x, y, len(classes), discriminators=opts.gan_augment_discriminators, steps=opts.gan_augment_steps,
              noise_dim=opts.gan_augment_noise_dim, hidden=opts.gan_augment_hidden, lr=opts.gan_augment_lr,
              seed=opts.gan_augment_seed)
    drawn = sample(gan, x, y, per_class, sampler=opts.gan_augment_sampler, chain_length=opts.gan_augment_chain_length,
                   seed=opts.gan_augment_seed)
    marker = opts.gan_augment_marker_column
    real = dataset.add_column(marker, [False] * len(dataset))
    synthetic = {name: [None] * len(drawn.labels) for name in real.features}
    for j, name in enumerate([] if layout else columns):
        column = drawn.features[:, j]
        integer = real.features[name].dtype.rstrip("0123456789") in ("int", "uint")
        synthetic[name] = [int(v) for v in np.rint(column)] if integer else [float(v) for v in column]
    if layout:
        from .images import to_column

        synthetic[image_column] = to_column(drawn.features, layout)
    synthetic[label] = [classes[i] for i in drawn.labels]
    synthetic[marker] = [True] * len(drawn.labels)
    from datasets import concatenate_datasets

    out = concatenate_datasets([real, Dataset.from_dict(synthetic, features=real.features)])
    report = {
        "method": "gan_augment (MhERGAN-style: conditional GAN, discriminator ensemble, MH sampling)",
        "sampler": opts.gan_augment_sampler,
        "real_rows": len(dataset),
        "synthetic_rows": int(len(drawn.labels)),
        "per_class": {repr(c): {"real": int(counts[i]), "synthetic": per_class[i]} for i, c in enumerate(classes)},
        "feature_columns": columns,
        "image_shape": list(layout["shape"]) if layout else None,
        "label_column": label,
        "marker_column": marker,
        "discriminators": opts.gan_augment_discriminators,
        "steps": opts.gan_augment_steps,
        "chain_length": opts.gan_augment_chain_length,
        "seed": opts.gan_augment_seed,
        "calibration": {"scale": gan.calibration[0], "bias": gan.calibration[1],
                        "fitted_on": "the training rows vs as many generator samples (no held-out rows in few-shot)"},
        "mh_proposals": drawn.proposals,
        "mh_accepted": drawn.accepted,
        "mh_acceptance_rate": drawn.accepted / drawn.proposals if drawn.proposals else None,
        "mh_restarts": drawn.restarts,
    }
    return out, report
