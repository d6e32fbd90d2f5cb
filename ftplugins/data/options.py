"""The options every selection plugin shares, built once and prefixed per plugin (``select_ot_budget``).

Each plugin's options dataclass is ``selection_options(name, own_fields)``: the shared fields below plus
its own, all ``<name>_*`` so they sit beside TRL's arguments. The command line (``ftplugins select``) and
the Python API (``ftplugins.data.select``) take the same fields without the prefix.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace
from typing import Any

# (name, type, default, help); no ``from __future__`` types here: HfArgumentParser reads them.
SHARED: list[tuple[str, type, Any, str]] = [
    ("budget", float, 0.05, "How many rows to keep: a fraction of the pool in (0, 1), or a row count >= 1."),
    ("text_field", str, "auto", "Column to embed/score; auto: the first of text, prompt, instruction, question, "
                                "messages, input."),
    ("seed", int, 0, "Seed of every random choice (k-means, draws); the same seed gives the same selection."),
    ("cache_dir", str, "", "Where embeddings and scores are cached (resumable chunks); empty: "
                           "$FTPLUGINS_CACHE or ~/.cache/ftplugins, then /selection; 'none': no cache."),
    ("batch_size", int, 64, "Rows per forward pass."),
    ("max_length", int, 256, "Tokens per row (longer rows are truncated)."),
    ("chunk_rows", int, 1024, "Rows per cache chunk (the unit an interrupted run resumes from)."),
    ("device", str, "auto", "Where embeddings, OT and k-means run: auto (this process's CUDA device when there is "
                            "one, else the CPU), cpu, cuda or cuda:N. k-means needs faiss' GPU build for CUDA "
                            "(faiss-cpu runs it on the CPU)."),
]
ENCODER = ("encoder", str, "minilm", "Embedding model: a Hugging Face encoder path or id (mean pooling; 'minilm': "
                                     "all-MiniLM-L6-v2), 'model' for the model being fine-tuned (mean last "
                                     "hidden state over response tokens), or 'gradients' (its per-row gradients "
                                     "w.r.t. a LoRA's / the last block's parameters, CountSketch-projected).")


def selection_options(plugin: str, own: list[tuple[str, type, Any, str]], encoder: bool = True,
                      check=None, doc: str = "") -> type:
    """The options dataclass of selection plugin ``plugin`` (fields ``<plugin>_<name>``)."""
    rows = SHARED + ([ENCODER] if encoder else []) + own
    fields = [(f"{plugin}_{name}", kind, dataclasses.field(default=default, metadata={"help": text}))
              for name, kind, default, text in rows]

    def __post_init__(self):
        values = plain(self, plugin)
        check_budget(f"{plugin}_budget", values.budget)
        for name in ("batch_size", "max_length", "chunk_rows"):
            if getattr(values, name) < 1:
                raise ValueError(f"--{plugin}_{name} {getattr(values, name)}: expected an integer >= 1")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", values.device):
            raise ValueError(f"--{plugin}_device {values.device!r}: expected auto, cpu, cuda or cuda:N")
        if check is not None:
            check(values)

    cls = dataclasses.make_dataclass(
        "".join(part.title() for part in plugin.split("_")) + "Options", fields,
        namespace={"__post_init__": __post_init__, "__doc__": doc or f"Options of {plugin}."},
    )
    cls.__module__ = f"ftplugins.methods.{plugin}.options"
    return cls


def plain(options: Any, plugin: str) -> SimpleNamespace:
    """The options without their ``<plugin>_`` prefix (what the selection code reads)."""
    cut = len(plugin) + 1
    return SimpleNamespace(**{f.name[cut:]: getattr(options, f.name) for f in dataclasses.fields(options)})


def check_budget(name: str, budget: float) -> None:
    if budget <= 0:
        raise ValueError(f"--{name} {budget}: expected a fraction in (0, 1) or a row count >= 1")
    if budget >= 1 and float(budget) != int(budget):
        raise ValueError(f"--{name} {budget}: a budget >= 1 is a row count and must be a whole number")


def budget_rows(budget: float, pool: int, name: str = "budget") -> int:
    """The number of rows a budget means for a pool of ``pool`` rows; a clear error when it cannot be met."""
    from ftplugins.errors import OptionError

    rows = max(1, int(round(budget * pool))) if budget < 1 else int(budget)
    if rows > pool:
        raise OptionError(
            f"{name} {int(budget)} is larger than the pool ({pool} rows); ask for at most {pool} rows or a fraction."
        )
    return rows
