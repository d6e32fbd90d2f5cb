"""Checkpoints that appear whole, and resuming only from whole ones.

transformers' ``Trainer._save_checkpoint`` writes ``OUTPUT/checkpoint-N`` file by file in place (model,
``optimizer.pt``, ``scheduler.pt``, RNG states, ``trainer_state.json``): killed half-way, it leaves a
folder that ``get_last_checkpoint`` picks and resume fails on; re-saved over a whole one, it truncates
``optimizer.pt`` under the old ``trainer_state.json``. Here the Trainer writes the whole checkpoint
into ``OUTPUT/.ftplugins-staging/checkpoint-N/checkpoint-N`` (every process, so DDP/FSDP ranks' files
land together), then, after every process has finished, the saving process writes a seal
(``ftplugins_checkpoint.json``: every file and its size) and moves the folder into place with one
rename (:func:`ftplugins.atomic.replace_dir`). The redirect is the Trainer's own ``_get_output_dir``
(the one place ``_save_checkpoint`` takes its folder from); ``tests/test_saves.py`` names the
upstream methods this relies on.

:func:`last_complete_checkpoint` is ``get_last_checkpoint`` that skips, with a warning, checkpoints
that are not whole (no ``trainer_state.json``, a file shorter than its seal records, or, for
checkpoints written without a seal, a truncated ``.pt``/``.safetensors``/``.json`` file).
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from typing import Any

from .atomic import STAGING, remove_if_empty, replace_dir

SEAL = "ftplugins_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_log = logging.getLogger("ftplugins.checkpoints")


def save_checkpoint_staged(trainer: Any, save: Any, model: Any, trial: Any) -> None:
    """Run ``save(model, trial)`` (the Trainer's ``_save_checkpoint``) into a staging folder, then move it."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    final = os.path.join(run_dir, name)
    staged_run_dir = os.path.join(run_dir, STAGING, name)
    staged = os.path.join(staged_run_dir, name)
    args = trainer.args
    push = args.push_to_hub
    trainer._ftplugins_staged_run_dir = staged_run_dir
    args.push_to_hub = False  # pushed below, from the checkpoint's final place
    try:
        save(model, trial)
    finally:
        trainer._ftplugins_staged_run_dir = None
        args.push_to_hub = push
    best = trainer.state.best_model_checkpoint
    if best and os.path.dirname(os.path.abspath(best)) == os.path.abspath(staged_run_dir):
        trainer.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
    trainer.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are in the staging folder
    if args.should_save:
        if best != trainer.state.best_model_checkpoint:  # the state file recorded the staging path
            trainer.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        from .resume_world import run_layout

        write_seal(staged, run=run_layout(args))
        replace_dir(staged, final)
        remove_if_empty(staged_run_dir)
        remove_if_empty(os.path.join(run_dir, STAGING))
        rotate_checkpoints(output_dir=run_dir, save_total_limit=args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    trainer.accelerator.wait_for_everyone()
    if push:
        trainer._push_from_checkpoint(final)


def write_seal(folder: str, run: dict[str, int] | None = None) -> None:
    """Record every file's size (and, given, the saving run's world size and global batch) in the seal."""
    files = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = os.path.getsize(path)
    files.pop(SEAL, None)
    with open(os.path.join(folder, SEAL), "w") as handle:
        json.dump({"files": files, **({"run": run} if run else {})}, handle, indent=1)


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a whole checkpoint, or ``None``."""
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state):
        return "no trainer_state.json"
    seal = os.path.join(folder, SEAL)
    if os.path.isfile(seal):
        try:
            with open(seal) as handle:
                files = json.load(handle)["files"]
        except (OSError, ValueError, KeyError):
            return f"{SEAL} is unreadable"
        for rel, size in files.items():
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                return f"{rel} is missing"
            if os.path.getsize(path) != size:
                return f"{rel} has {os.path.getsize(path)} bytes, {size} were written"
        return None
    for name in sorted(os.listdir(folder)):  # written without a seal: check each file's own structure
        problem = _file_problem(os.path.join(folder, name))
        if problem:
            return f"{name} {problem}"
    return None


def _file_problem(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    if path.endswith((".pt", ".pth", ".bin")):
        return None if zipfile.is_zipfile(path) else "is truncated (not a whole torch file)"
    if path.endswith(".safetensors"):
        try:
            with open(path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            return None if os.path.getsize(path) >= 8 + size + end else "is truncated"
        except (OSError, ValueError, KeyError, TypeError):
            return "is truncated (unreadable header)"
    if path.endswith(".json"):
        try:
            with open(path) as handle:
                json.load(handle)
        except (OSError, ValueError):
            return "is truncated (not valid JSON)"
    return None


def last_complete_checkpoint(folder: str) -> str | None:
    """The whole ``checkpoint-N`` with the largest N in ``folder``; incomplete ones are skipped with a warning."""
    if not os.path.isdir(folder):
        return None
    steps = sorted(((int(m.group(1)), name) for name in os.listdir(folder)
                    if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(folder, name))), reverse=True)
    for _step, name in steps:
        path = os.path.join(folder, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        _log.warning("skipping incomplete checkpoint %s (%s); resuming from an earlier one", path, problem)
    return None


def has_checkpoints(folder: str) -> bool:
    return os.path.isdir(folder) and any(_CHECKPOINT.match(n) for n in os.listdir(folder))
