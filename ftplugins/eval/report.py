"""Publishing a harness's result inside a training run: metrics into the Trainer's log, the whole result as JSON."""

from __future__ import annotations

import json
import os
from typing import Any


def parse_ks(text: str | Any, what: str) -> list[int]:
    """``"1,5,10"`` (or a list) -> [1, 5, 10]; one clear error for anything else."""
    from ftplugins.errors import FtpluginsError

    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        ks = sorted({int(str(k).strip()) for k in items if str(k).strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise FtpluginsError(f"{what}: k={text!r}; expected positive integers separated by commas, e.g. 1,5,10.")
    return ks


def publish_result(trainer: Any, prefix: str, result: dict, filename: str) -> dict:
    """Log ``result["metrics"]`` as ``{prefix}/{name}`` through ``trainer.log`` and write OUTPUT_DIR/filename
    (main process only, atomically). Returns the logged metrics."""
    from ftplugins.atomic import staged_dir

    metrics = {f"{prefix}/{name}": value for name, value in result["metrics"].items()}
    trainer.log(dict(metrics))
    args = trainer.args
    if args.should_save:
        with staged_dir(args.output_dir) as tmp, open(os.path.join(tmp, filename), "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    return metrics


def unwrapped_model(trainer: Any) -> Any:
    """The trainer's model without DDP / accelerate wrappers (generation needs ``.generate``)."""
    model = trainer.model
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    return model
