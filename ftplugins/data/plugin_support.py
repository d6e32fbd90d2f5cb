"""What the three selection plugins share: selecting the train split in ``transform_dataset``."""

from __future__ import annotations

import logging
import os
from typing import Any

from .extras import requires

logger = logging.getLogger("ftplugins.data")
REQUIRES = requires()


def select_train_split(plugin: Any, run: Any, dataset: Any, split: str) -> Any:
    """The selected train rows (other splits unchanged); the report goes to OUTPUT_DIR/<plugin>_report.json."""
    if split != "train" or dataset is None:
        return None
    from .pipeline import Context, run_selection
    from .report import write_report

    args = run.args
    context = Context(model=run.model, tokenizer=tokenizer_or_none(run),
                      show_progress=not getattr(args, "disable_tqdm", False) and is_main(args))
    # Under DDP every process selects: the embedding/scoring chunks are shared through the cache (each process
    # computes its shard, :mod:`.shards`) and the rest is seeded, so all processes keep the same rows.
    selection = run_selection(plugin, dataset, run.options_for(plugin), context)
    run.state[plugin.name] = {"indices": selection.indices, "report": selection.report}
    logger.info("%s kept %d of %d train rows", plugin.name, len(selection.indices), len(dataset))
    if args is not None and is_main(args) and getattr(args, "output_dir", None):
        write_report(selection.report, os.path.join(args.output_dir, f"{plugin.name}_report.json"))
    return selection.dataset


def tokenizer_or_none(run: Any) -> Any:
    """The run's tokenizer, or ``None`` when it has none (a method that needs one says so itself)."""
    if run.processing_class is None and run.model is None:
        return None
    from ftplugins.errors import FtpluginsError
    from ftplugins.objectives.sft_tokens import run_tokenizer

    try:
        return run_tokenizer(run)
    except FtpluginsError:
        return None


def is_main(args: Any) -> bool:
    return int(getattr(args, "process_index", 0) or 0) == 0
