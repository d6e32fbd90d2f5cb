"""LT-SFT: Lottery-Ticket Sparse Fine-Tuning (Ansell et al., ACL 2022, arXiv:2110.07560).

Phase 1 fine-tunes the whole model from θ0; the K entries of the base model (every parameter except
the output head) that moved most, |θ1 - θ0| globally across tensors, are the ticket; the weights are
reset to θ0 and phase 2 trains only the ticket (and the head, dense) with a fresh optimizer and
scheduler and an optional L1 pull toward θ0. The artifact is a sparse delta θ - θ0 (head dense),
composable by addition (language SFT + task SFT). Phase 2 runs on the shared sparse engine
(:mod:`ftplugins.sparse`); ``select`` below is the top-K rule as a pure function; how the phases map
onto one ``trainer.train()`` (and resume) is described in :mod:`ftplugins.methods.lt_sft.training`.

Differences from the reference (cambridgeltl/composable-sft), on purpose:

* The top-K is an exact radix select over one tensor at a time (the reference sorts a Python list
  of all differences).
* Masked-out entries have no optimizer state and are not decayed: they stay bitwise at θ0 (the
  reference multiplies gradients by the mask, which leaves weight decay free to move them).
* The delta keeps every nonzero change in fp64 (the reference drops |Δ| <= 1e-7 and stores fp32),
  so apply / revert / compose are exact.
* Phase 1 is a compact loop inside the Trainer's optimizer creation, not a second Trainer run. With
  ``lt_sft_iterations=n > 1`` the first n-1 iterations (phase 1, K/n more entries, reset, phase 2 on all
  masks so far) run there too, and the Trainer's loop is the last phase 2; the delta is still θ - θ0.

This module imports no torch; the pieces are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from ftplugins.distributed_reasons import OWN_LOOP
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl
from ftplugins.sparse.plugin import SparseEngineHooks

from .options import LtSftOptions

STATE_KEY = "lt_sft"


def select(diff_by_name: Any, k: int) -> dict[str, Any]:
    """Per name a boolean mask: the global top-``k`` of ``|diff|``; see :mod:`ftplugins.methods.lt_sft.selection`."""
    from .selection import select as _select

    return _select(diff_by_name, k)


class LtSftPlugin(SparseEngineHooks, Plugin):
    name = "lt_sft"
    summary = "LT-SFT: lottery-ticket sparse fine-tuning (full FT finds the K entries that train), composable deltas"
    paper = ("Ansell et al., Composable Sparse Fine-Tuning for Cross-Lingual Transfer, ACL 2022, "
             "arXiv:2110.07560")
    options = LtSftOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains the K entries its full fine-tuning phase selects",
        "optimizer": "steps them with its sparse AdamW",
    }
    distributed = ("single",)
    # The sparse engine itself trains on FSDP2's row shards (lift, sara); phase 1 is the obstacle.
    distributed_refusals = {mode: "phase 1 trains dense weights " + OWN_LOOP for mode in ("ddp", "fsdp", "deepspeed")}

    @hookimpl
    def validate(self, run):
        args = run.args
        if args is not None and getattr(args, "fp16", False):
            raise FtpluginsError(
                "lt_sft with fp16=True: fp16 mixed precision scales the loss and unscales .grad tensors, which the "
                "sparse engine replaces by compact gradients in phase 2; use bf16=True or fp32."
            )

    @hookimpl
    def train_begin(self, run, resume_from_checkpoint):
        # A resumed run skips phase 1: the checkpoint's masks replace the ticket.
        run.state.setdefault(STATE_KEY, {})["resuming"] = resume_from_checkpoint not in (None, False)

    @hookimpl
    def prepare_model(self, run, model):
        from .training import prepare

        run.state.setdefault(STATE_KEY, {})["targets"] = prepare(model)
        return model

    @hookimpl
    def create_optimizer(self, run, model, args):
        from .training import build_optimizer, find_ticket, placeholder_selection, restore_origin

        state = run.state.get(STATE_KEY, {})
        if "targets" not in state:
            raise FtpluginsError("lt_sft: create_optimizer ran before prepare_model; build the trainer with "
                                 "ftplugins.compose so that the hooks run in order")
        options = run.options_for(self)
        from ftplugins.sparse.trainer import around_optimizer

        if state.get("resuming"):
            selection = placeholder_selection(model, state["targets"])  # the checkpoint's masks replace these
        else:
            state.update(find_ticket(run.trainer, model, options, state["targets"]))
            selection = state["selection"]

        def phase2_optimizer():
            optimizer = build_optimizer(model, args, options, state["targets"], selection)
            restore_origin(optimizer, state.get("origin") or {})  # earlier iterations trained some entries already
            return optimizer

        return around_optimizer(model, phase2_optimizer)

    @hookimpl
    def post_train(self, run, trainer):
        options = run.options_for(self)
        if options.lt_sft_save_delta:
            from .training import save_delta_of

            save_delta_of(trainer, options, run.state.get(STATE_KEY, {}))


plugin = LtSftPlugin()
