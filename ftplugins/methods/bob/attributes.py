"""The class-agnostic attributes of each real image, and the pool generation draws from.

An attribute comes from the user's function (``bob_attribute_fn``: ``function(image, row) -> {name: text}``, e.g.
a captioning model's background description) or, by default, from the dataset column of the same name. No
captioning model is built in: none is available offline here, and a user function can wrap any.

The pool (``bob_attributes.json`` in the run's output folder) records, per real image, its class and the texts of
the template's attributes; :mod:`.marginal` draws generation attributes from it without looking at the classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ftplugins.errors import FtpluginsError

from .template import CaptionTemplate

FILENAME = "bob_attributes.json"


@dataclass
class AttributePool:
    """Per real image: its class and its attribute texts (the template's attributes only)."""

    template: str
    classes: list[str]  # every class name of the dataset, sorted
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"class": name, "attributes": {name: text}}

    @property
    def attributes(self) -> list[str]:
        return CaptionTemplate(self.template).attributes

    def captions(self) -> list[str]:
        """The fine-tuning captions of the real images (what generation must not simply replay)."""
        template = CaptionTemplate(self.template)
        return [template.render(r["class"], r["attributes"]) for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "classes": self.classes, "rows": self.rows}

    def save(self, folder: str) -> str:
        """Write ``folder/bob_attributes.json`` through the staging helper (never a half-written file)."""
        from ftplugins.atomic import staged_dir

        with staged_dir(folder) as tmp, open(os.path.join(tmp, FILENAME), "w") as handle:
            json.dump(self.to_json(), handle, indent=1)
        return os.path.join(folder, FILENAME)

    @classmethod
    def load(cls, path: str) -> AttributePool:
        """From a run's output folder or the JSON file itself; one clear line when it is not a BOB pool."""
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        try:
            with open(path) as handle:
                data = json.load(handle)
            pool = cls(data["template"], list(data["classes"]), list(data["rows"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FtpluginsError(f"{path}: not a BOB attribute pool ({type(exc).__name__}: {exc}); pass the output "
                                 f"folder of a run with --plugins bob (it holds {FILENAME}).") from None
        if not pool.rows:
            raise FtpluginsError(f"{path}: the attribute pool is empty; fine-tune with --plugins bob on real images "
                                 "first.")
        return pool


def class_names(dataset: Any, column: str) -> list[str] | None:
    """The ClassLabel names of ``column``, or None when it holds names itself."""
    feature = getattr(dataset, "features", {}).get(column)
    return list(feature.names) if hasattr(feature, "names") else None


def class_of(value: Any, names: list[str] | None, column: str, index: int) -> str:
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise FtpluginsError(f"row {index}: column {column!r} holds {value!r}, expected a class name (text) or a "
                         "ClassLabel index; cast the column to datasets.ClassLabel(names=[...]) or store names.")


def extract(dataset: Any, template: CaptionTemplate, class_column: str, image_column: str,
            attribute_fn: Any = None) -> list[dict[str, Any]]:
    """``[{"class": name, "attributes": {...}}]`` for every row of ``dataset`` (in order)."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise FtpluginsError(f"bob needs a datasets.Dataset, got {type(dataset).__name__}.")
    needed = [class_column] + ([image_column] if attribute_fn is not None else template.attributes)
    missing = [c for c in needed if c not in columns]
    if missing:
        where = ("the image column for bob_attribute_fn" if attribute_fn is not None
                 else "one column per template attribute (or set bob_attribute_fn)")
        raise FtpluginsError(f"the dataset has columns {columns} but bob needs {missing}: the class column "
                             f"(bob_class_column) and {where}.")
    names = class_names(dataset, class_column)
    rows = []
    source = dataset if attribute_fn is not None else dataset.select_columns(needed)  # no image decoding
    for index, row in enumerate(source):
        if attribute_fn is not None:
            from ftplugins.diffusion.collator import load_image

            found = attribute_fn(load_image(row[image_column], image_column, index), row)
            if not isinstance(found, dict):
                raise FtpluginsError(f"bob_attribute_fn returned {type(found).__name__} for row {index}; return a "
                                     f"dict {{attribute: text}} with {template.attributes}.")
        else:
            found = {a: row[a] for a in template.attributes}
        bad = [a for a in template.attributes if not isinstance(found.get(a), str) or not found[a].strip()]
        if bad:
            raise FtpluginsError(f"row {index}: attribute(s) {bad} have no text ({ {a: found.get(a) for a in bad} }); "
                                 "every real image needs a non-empty text for each attribute of bob_template.")
        rows.append({"class": class_of(row[class_column], names, class_column, index),
                     "attributes": {a: found[a].strip() for a in template.attributes}})
    if not rows:
        raise FtpluginsError("bob: the training dataset is empty; give it the real images.")
    return rows


def caption_rows(dataset: Any, rows: list[dict[str, Any]], template: CaptionTemplate, caption_column: str) -> Any:
    """``dataset`` with ``caption_column`` replaced by the template's captions of ``rows``."""
    captions = [template.render(r["class"], r["attributes"]) for r in rows]
    if caption_column in dataset.column_names:
        dataset = dataset.remove_columns([caption_column])
    return dataset.add_column(caption_column, captions)
