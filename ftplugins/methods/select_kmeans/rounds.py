"""Iterative kMQ as a plugin: the rounds are epochs of one training run.

* ``transform_dataset`` embeds and clusters the pool, draws the first slice, and hands the trainer the whole pool
  (so TRL tokenizes every row once, in pool order);
* ``train_begin`` replaces ``trainer.train_dataset`` by a :class:`RoundView`: a fixed-length view of the tokenized
  pool showing the current round's rows (the dataloader, built next, samples ``range(len(view))`` every epoch). With
  ``select_kmeans_round_rows growing`` (the default) they are every row selected so far, in the order drawn, cycled
  to the budget's length: the paper retrains each round on the growing selection, and a fixed length keeps the
  trainer's step count (epochs x budget rows, what single-shot kMQ costs) exact. With ``slice`` they are the newest
  slice only (epochs of ``budget // rounds`` rows). One run is not the paper's fresh fine-tune per round (early
  slices are trained more often); on the quality harness both modes score below single-shot kMQ, growing well above
  slice (BENCHMARKS.md, data selection);
* :class:`RoundsCallback` ends a round every ``num_train_epochs // rounds`` epochs (left-over epochs stay in the last
  round): it scores the held-out rows with the model just trained, draws the next slice from the unselected rows and
  points the view at the round's rows. The next epoch's iterator reads them; nothing of the trainer's loop is
  touched.
* ``save_checkpoint`` writes the rounds (slices, cluster weights, the draws' generator, epochs counted) into every
  checkpoint as ``ROUNDS_FILE``; ``train_begin`` of a resumed run reads them back and shows the checkpoint's rows.
  A checkpoint written at an epoch's last step precedes that epoch's end of round: the callback's ``on_train_begin``
  ends the rounds of the epochs the checkpoint completed (the model is the checkpoint's by then), so a resumed run
  trains exactly the slices an uninterrupted one does.

Under DDP every process scores (the same weights, the same rows) and rank 0's scores are broadcast, so every rank
draws the same slice. Dataloader workers that persist across epochs would keep the old view: refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from ftplugins.errors import FtpluginsError

from .iterative import IterativeDraws, plan, round_scorer, score_rows

logger = logging.getLogger("ftplugins.data")
ROUNDS_FILE = "select_kmeans_rounds.json"


class RoundView:
    """The rows ``current`` of ``rows`` (a tokenized pool), as a map-style dataset of fixed length."""

    def __init__(self, rows: Any, current: list[int]):
        self.rows, self.current = rows, list(current)

    def show(self, indices: list[int]) -> None:
        if len(indices) != len(self.current):
            raise AssertionError("a round's rows changed length")  # round_rows keeps every round's length
        self.current = list(indices)

    def __len__(self) -> int:
        return len(self.current)

    def __getitem__(self, i: int) -> Any:
        return self.rows[self.current[i]]


def round_rows(draws: IterativeDraws, mode: str) -> list[int]:
    """The pool rows the current round's epochs train on: the newest slice (``slice``), or every slice so far in
    the order drawn, cycled to the budget's length (``growing``; where the budget is not a multiple of the rows so
    far, the oldest rows come once more)."""
    if mode == "slice":
        return list(draws.slices[-1])
    selected = [i for piece in draws.slices for i in piece]
    return [selected[i % len(selected)] for i in range(draws.slice_size * draws.rounds)]


@dataclass
class RoundsState:
    draws: IterativeDraws
    pool: Any
    settings: Any
    tokenizer: Any
    report: dict[str, Any]
    view: RoundView | None = None
    epochs_done: int = 0  # whole epochs whose end of round has been handled


def prepare(plugin: Any, run: Any, dataset: Any) -> Any:
    """``transform_dataset`` of the train split: plan the rounds, return the whole pool for the trainer."""
    from ftplugins.data.options import plain
    from ftplugins.data.pipeline import Context
    from ftplugins.data.plugin_support import is_main, tokenizer_or_none
    from ftplugins.data.source import load_pool, resolve_text_field

    settings = plain(run.options_for(plugin), plugin.name)
    pool = load_pool(dataset)
    settings.text_field = resolve_text_field(pool, settings.text_field)
    tokenizer = tokenizer_or_none(run)
    show = not getattr(run.args, "disable_tqdm", False) and is_main(run.args)
    draws, report = plan(pool, settings, Context(model=run.model, tokenizer=tokenizer, show_progress=show))
    draws.first()
    run.state[plugin.name] = RoundsState(draws, pool, settings, tokenizer, report)
    return pool


def begin(plugin: Any, run: Any, trainer: Any, resume_from_checkpoint: Any) -> None:
    """``train_begin``: show the first round's rows through a view of the tokenized pool."""
    state = run.state.get(plugin.name)
    if not isinstance(state, RoundsState):
        raise FtpluginsError("select_kmeans_rounds > 1 selects the train split while the trainer is built; give "
                             "the trainer a train_dataset.")
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        load_rounds(state, str(resume_from_checkpoint))
    rows = trainer.train_dataset
    if len(rows) != len(state.pool):
        raise FtpluginsError(f"select_kmeans_rounds > 1 maps the trainer's train rows to the pool row by row, but "
                             f"the trainer holds {len(rows)} rows for a pool of {len(state.pool)} (packing?); train "
                             "without packing.")
    state.view = RoundView(rows, round_rows(state.draws, state.settings.round_rows))
    trainer.train_dataset = state.view


def save_rounds(state: RoundsState, checkpoint: str) -> None:
    """Into the checkpoint being written (staged by ftplugins: it appears whole or not at all)."""
    with open(os.path.join(checkpoint, ROUNDS_FILE), "w") as f:
        json.dump({"epochs_done": state.epochs_done, "round_rows": state.settings.round_rows,
                   "draws": state.draws.state_dict()}, f)


def load_rounds(state: RoundsState, checkpoint: str) -> None:
    path = os.path.join(checkpoint, ROUNDS_FILE)
    if not os.path.exists(path):
        raise FtpluginsError(f"select_kmeans_rounds: checkpoint {checkpoint} has no {ROUNDS_FILE} (saved without "
                             "select_kmeans rounds, or by an older version); resuming would redraw the rounds. Resume "
                             "from a checkpoint of a select_kmeans_rounds run, or train from the start.")
    with open(path) as f:
        saved = json.load(f)
    try:
        state.draws.load_state_dict(saved["draws"])
    except ValueError as error:
        raise FtpluginsError(f"select_kmeans_rounds: the rounds in {path} were {error}; resume with the train data "
                             "and select_kmeans options of the interrupted run, or train from the start.") from None
    saved_rows = saved.get("round_rows", "slice")  # checkpoints from before the option trained slices
    if saved_rows != state.settings.round_rows:
        raise FtpluginsError(f"select_kmeans_rounds: the run in {path} trained with select_kmeans_round_rows "
                             f"{saved_rows}, this one asks for {state.settings.round_rows}; resume with "
                             f"--select_kmeans_round_rows {saved_rows}, or train from the start.")
    state.epochs_done = int(saved["epochs_done"])


class RoundsCallback(TrainerCallback):
    """Ends a round every ``epochs // rounds`` epochs: score, reweight, draw the next slice, show the round's rows."""

    def __init__(self, plugin: Any, run: Any):
        self.plugin, self.run = plugin, run
        self.per_round = 1

    @property
    def state(self) -> RoundsState:
        return self.run.state[self.plugin.name]

    def on_train_begin(self, args, state, control, **kwargs):
        rounds = self.state.draws.rounds
        epochs = int(state.num_train_epochs)
        if epochs < rounds:
            raise FtpluginsError(f"select_kmeans_rounds {rounds}: each round trains at least one epoch on its "
                                 f"slice, but this run trains {epochs} epoch(s) of {len(self.state.view)} rows; set "
                                 f"num_train_epochs to a multiple of {rounds} (and max_steps to -1).")
        self.per_round = epochs // rounds
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            raise FtpluginsError("select_kmeans_rounds > 1 shows a new slice each round; persistent dataloader "
                                 "workers would keep the first. Set dataloader_persistent_workers false.")
        self._catch_up(state, kwargs.get("model"))  # a resumed run: the checkpoint's completed epochs

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._catch_up(state, model)

    def _catch_up(self, state, model) -> None:
        """End the round of every whole epoch not counted yet (an epoch cut short by a stop is not whole)."""
        completed = math.floor(state.epoch + 1e-9) if state.epoch else 0
        while self.state.epochs_done < completed:
            self.state.epochs_done += 1
            if self.state.epochs_done % self.per_round == 0 and not self.state.draws.done:
                self._next_round(model)

    def _next_round(self, model) -> None:
        rounds = self.state
        d = score_rows(round_scorer(rounds.settings.round_score, rounds.settings.max_length), model,
                       rounds.tokenizer, rounds.pool, rounds.settings, rounds.draws.scored_rows())
        rounds.draws.next(_from_rank_zero(d))
        rounds.view.show(round_rows(rounds.draws, rounds.settings.round_rows))
        logger.info("select_kmeans round %d of %d: cluster weights %s", len(rounds.draws.slices),
                    rounds.draws.rounds, [round(w, 3) for w in rounds.draws.weights[-1]])

    def on_train_end(self, args, state, control, **kwargs):
        from ftplugins.data.plugin_support import is_main
        from ftplugins.data.report import write_report

        rounds = self.state
        report = {**rounds.report, **rounds.draws.report(), "selected": int(len(rounds.draws.selected)),
                  "rounds_trained": len(rounds.draws.slices)}
        self.run.state[f"{self.plugin.name}_rounds"] = {"indices": rounds.draws.selected.tolist(), "report": report}
        if is_main(args) and getattr(args, "output_dir", None):
            write_report(report, os.path.join(args.output_dir, f"{self.plugin.name}_report.json"))


def _from_rank_zero(d: Any) -> Any:
    """Rank 0's scores on every process (they agree already with equal weights; this makes it certain)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return d
    box = [list(map(float, d))]
    dist.broadcast_object_list(box, src=0)
    return box[0]

