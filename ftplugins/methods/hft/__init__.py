"""HFT: Half Fine-Tuning (Hui et al., ACL 2025, arXiv:2404.18466).

Full fine-tuning of a random half of each transformer block, chosen per category: in every layer a
random 2 of {q,k,v,o}_proj, 2 of {gate,up,down}_proj in a random half of the layers and 1 in the
others, and 1 of the 2 norms are frozen (``requires_grad=False``); embeddings, lm_head and the final
norm train. Frozen tensors keep their current values (no reset). The draw is seeded
(``hft_seed``, default the trainer's ``--seed``) and made once per run ("stage", the default, as the
paper's Fig. 2) or again at the start of every epoch (``hft_redraw=epoch``). ``select`` below is the
rule as a pure function. The artifact is the ordinary dense checkpoint.

Design notes:

* Stage mode needs no optimizer of its own: the Trainer's optimizer only takes parameters that
  require grad, so its state covers the trainable half only.
* Epoch mode re-targets the Trainer's two param groups in place at each epoch start (scheduler and
  Accelerate wrapper stay valid). Moments of tensors that stay trainable carry over (the draw changes
  which tensors train, not the objective); frozen tensors lose their state; newly trainable ones start
  fresh. Draw e uses seed ``seed + 1_000_003 e``. On resume the draw active at the checkpoint is
  re-made before the optimizer state is loaded, then the epoch start re-draws as the uninterrupted run.

This module imports no torch; the pieces are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from ftplugins.distributed_reasons import untested
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import HftOptions

STATE_KEY = "hft"


def select(model: Any, seed: int) -> dict[str, bool]:
    """``{parameter name: trainable}``; see :func:`ftplugins.methods.hft.selection.select`."""
    from .selection import select as _select

    return _select(model, seed)


def _seed(run: Any, options: HftOptions) -> int:
    if options.hft_seed >= 0:
        return options.hft_seed
    return int(getattr(run.args, "seed", 0) or 0)


class HftPlugin(Plugin):
    name = "hft"
    summary = "Half Fine-Tuning: full fine-tuning of a random, category-balanced half of each transformer block"
    paper = "Hui et al., HFT: Half Fine-Tuning for Large Language Models, ACL 2025, arXiv:2404.18466"
    options = HftOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains a random half of each block's tensors",
    }
    # Only requires_grad changes: DDP works (find_unused_parameters is not needed, frozen tensors take no
    # gradient); FSDP/DeepSpeed flatten parameters and are not supported.
    distributed = ("single", "ddp")
    distributed_refusals = {
        "fsdp": untested("fsdp", "stage mode freezes whole tensors before fully_shard; the epoch redraw flips sharded "
                                 "ones"),
        "deepspeed": "ZeRO flattens the trainable tensors into its partitions once; the epoch redraw changes them "
                     "(stage mode: untested)",
    }

    @hookimpl
    def prepare_model(self, run, model):
        from .training import draw

        if getattr(model, "peft_config", None):
            raise FtpluginsError("hft freezes half of the base model's own tensors and trains the rest fully; this "
                                 "model carries a PEFT adapter (--use_peft or another plugin): drop one of the two.")
        options = run.options_for(self)
        seed = _seed(run, options)
        run.state[STATE_KEY] = {"seed": seed, "epoch": 0, "trainable": draw(model, seed, 0)}
        return model

    @hookimpl
    def callbacks(self, run):
        if run.options_for(self).hft_redraw != "epoch":
            return []
        from .trainer import HftRedrawCallback

        return [HftRedrawCallback(run)]

    @hookimpl
    def load_optimizer_state(self, run, trainer, checkpoint):
        if run.options_for(self).hft_redraw == "epoch":
            from .trainer import redraw_for_checkpoint

            redraw_for_checkpoint(run, trainer, checkpoint)


plugin = HftPlugin()
