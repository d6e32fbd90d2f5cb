"""What every multi-process child script of the tests does around its cases: save a rank's trained weights, run the
cases in one process group, then leave without the interpreter's teardown."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ftplugins.process_end import end_distributed_process


def save_rank_weights(trainer, out: str) -> int:
    """Write this rank's trainable weights to ``out/rank<i>.pt``; returns the rank."""
    rank = trainer.args.process_index
    os.makedirs(out, exist_ok=True)
    weights = {k: v.detach().cpu().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    torch.save(weights, os.path.join(out, f"rank{rank}.pt"))
    return rank


def run_cases_and_exit(run_case: Callable[[str, str, int], object], root: str, names: list[str], world: int) -> None:
    torch.set_num_threads(1)
    for name in names:
        run_case(name, root, world)
    end_distributed_process()  # no interpreter teardown, where gloo can abort a finished rank
