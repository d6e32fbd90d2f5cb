"""The pieces of the ``contrastive_explore`` plugin that need torch: the growing pool and the round callback."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError

from .cge_pool_plugin import POOL_FILE
from .step_log import log_during_step
from .contrastive import AdapterDisabled, contrastive_generate_ids


class GrowingPool(torch.utils.data.Dataset):
    """The trainer's (tokenized) train dataset followed by generated rows; samplers see the new length each epoch."""

    def __init__(self, dataset: Any):
        self.dataset, self.extra = dataset, []
        self.columns = list(dataset.column_names) if hasattr(dataset, "column_names") else list(dataset[0])

    def __len__(self) -> int:
        return len(self.dataset) + len(self.extra)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index] if index < len(self.dataset) else self.extra[index - len(self.dataset)]

    def row(self, ids: list[int], text: str) -> dict:
        """A generated sequence in the dataset's own columns: every token trains (masks all ones)."""
        if "input_ids" not in self.columns:
            raise FtpluginsError(f"contrastive_explore: the train dataset has no input_ids column ({self.columns}); "
                                 "it adds generated token sequences to a tokenized language-modelling dataset")
        row: dict[str, Any] = {}
        for column in self.columns:
            if column in ("input_ids", "labels"):  # labels: every generated token is a target
                row[column] = list(ids)
            elif column.endswith("mask") or column.endswith("masks"):
                row[column] = [1] * len(ids)
            elif column == "position_ids":
                row[column] = list(range(len(ids)))
            else:
                row[column] = text
        return row


def start_pool(run: Any, trainer: Any, options: Any, resume_from_checkpoint: Any) -> None:
    """Wrap the train dataset in a :class:`GrowingPool` (with the rows of the checkpoint when resuming); for full
    fine-tuning keep a frozen copy of the initial weights as the base."""
    from ftplugins.eval.report import unwrapped_model

    from .reverse_ft import fresh_copy

    pool = GrowingPool(trainer.train_dataset)
    samples = []
    if isinstance(resume_from_checkpoint, str):  # the rows generated up to the checkpoint, none after it
        step = checkpoint_step(resume_from_checkpoint)
        samples = [s for s in read_pool(trainer.args.output_dir) if s["step"] <= step]
        pool.extra = [pool.row(s["input_ids"], s["text"]) for s in samples]
    trainer.train_dataset = pool
    model = unwrapped_model(trainer)
    if hasattr(model, "disable_adapter"):
        base = AdapterDisabled(model)
    else:
        base = fresh_copy(model).eval().requires_grad_(False)
    run.state["contrastive_explore"] = {"pool": pool, "base": base, "samples": samples}


def checkpoint_step(checkpoint: str) -> int:
    with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
        return int(json.load(handle)["global_step"])


def read_pool(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, POOL_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


class ExploreCallback(TrainerCallback):
    def __init__(self, run: Any, options: Any):
        self.run, self.options = run, options

    def on_step_end(self, args, state, control, **kwargs):
        if self.options.contrastive_explore_every and state.global_step % self.options.contrastive_explore_every == 0:
            self.explore(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.options.contrastive_explore_every:
            self.explore(args, state)

    def explore(self, args, state) -> None:
        from ftplugins.atomic import staged_dir
        from ftplugins.eval.report import unwrapped_model

        held = self.run.state["contrastive_explore"]
        trainer, opts = self.run.trainer, self.options
        model, tokenizer = unwrapped_model(trainer), trainer.processing_class
        prompt = (tokenizer.bos_token or "") + opts.contrastive_explore_prompt
        if not prompt:
            raise FtpluginsError("contrastive_explore: the tokenizer has no BOS token to start a sample from; set "
                                 "--contrastive_explore_prompt")
        was_training = model.training
        model.eval()
        # Own seed per round, and the trainer's random state left as it was (a resumed run samples the same rows).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed * 1_000_003 + state.global_step)
            new = contrastive_generate_ids(
                model, tokenizer, [prompt] * opts.contrastive_explore_samples, held["base"],
                alpha=opts.contrastive_explore_alpha, gamma=opts.contrastive_explore_gamma,
                max_new_tokens=opts.contrastive_explore_max_new_tokens, do_sample=True,
                temperature=opts.contrastive_explore_temperature, top_k=0, top_p=1.0)
        model.train(was_training)
        start = list(tokenizer(prompt)["input_ids"])  # as contrastive_generate_ids encodes it
        pad = tokenizer.pad_token_id
        rows = []
        for ids in new:
            sequence = start + [t for t in ids if t != pad]
            text = tokenizer.decode(sequence, skip_special_tokens=True)
            rows.append(held["pool"].row(sequence, text))
            held["samples"].append({"step": state.global_step, "text": text, "input_ids": sequence})
        held["pool"].extra.extend(rows)
        if args.should_save:
            with staged_dir(args.output_dir) as tmp, open(os.path.join(tmp, POOL_FILE), "w") as handle:
                handle.writelines(json.dumps(sample) + "\n" for sample in held["samples"])
        log_during_step(trainer, {"contrastive_explore/pool_rows": float(len(held["pool"])),
                                  "contrastive_explore/generated": float(len(held["pool"].extra))})
