"""LP-FT: linear probing, then fine-tuning.

Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution" (ICLR 2022,
arXiv:2202.10054): training the head alone first (linear probing) and then the whole model starts fine-tuning from a
head that already fits the features, so the features move less and out-of-distribution accuracy holds better. The
seed papers ask for it as Florence's transfer modes (linear probe / fine-tune) and the few-shot SFUDA study's careful
fine-tuning. Phase 2 trains whatever the run trains (the whole model, or the adapter given to the trainer).

The switch is a callback: every trainable parameter is in the optimizer from the start; during linear probing the
parameters outside the head do not require gradients, so they get none and the optimizer (AdamW, SGD) leaves them and
their weight decay alone. Their optimizer state starts at the switch. One learning-rate schedule spans both phases,
unless ``lp_ft_probe_lr`` gives the probing steps their own constant rate (set just before each probing step's
``optimizer.step()`` and put back right after it, so the scheduler and its checkpoint never see it); with it,
``lp_ft_restart_schedule`` gives the fine-tuning steps the run's schedule afresh (warm-up and decay over the steps
after the switch: the paper's protocol, which fits the probe first and then fine-tunes as plain fine-tuning would).

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.plugin import Plugin, hookimpl

from .options import LpFtOptions

PARTS = "lp_ft"


class LpFtPlugin(Plugin):
    name = "lp_ft"
    summary = "LP-FT: train the head alone first (linear probing), then the whole model or the adapter."
    paper = "Kumar et al., ICLR 2022, arXiv:2202.10054"
    options = LpFtOptions
    distributed = ("single",)
    distributed_refusals = {mode: "changes which parameters need gradients at the switch, which the distributed "
                            "wrapper fixes when it wraps the model" for mode in ("ddp", "fsdp", "deepspeed")}
    claims = {"trainable_set": "trains the head alone first, then everything the run trains"}

    @hookimpl
    def prepare_model(self, run, model):
        from .phases import split_head

        run.state[PARTS] = split_head(model, run.options_for(self).lp_ft_head)

    @hookimpl
    def callbacks(self, run):
        from .phases import LinearProbeThenFineTune

        opts = run.options_for(self)
        return [LinearProbeThenFineTune(run, PARTS, opts.lp_ft_probe_ratio, opts.lp_ft_probe_steps,
                                        opts.lp_ft_probe_lr, opts.lp_ft_restart_schedule)]


plugin = LpFtPlugin()
