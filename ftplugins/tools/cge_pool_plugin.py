"""The ``contrastive_explore`` plugin: iterative CGE inside a run -- between rounds, contrastive samples join the pool.

CGE (arXiv:2410.14765) decodes what the fine-tuned model knows and its base does not (``log p_FT - γ log p_base``
inside the fine-tuned model's α-plausibility head; :mod:`ftplugins.tools.contrastive`). Here the model being trained
is the fine-tuned model: at the end of every round (an epoch, or ``contrastive_explore_every`` optimizer steps) it
writes ``contrastive_explore_samples`` sampled sequences contrasted with its base -- the same model with its adapter
disabled for a PEFT run (no copy), a frozen copy of the initial weights for full fine-tuning -- and they join the
training pool; later epochs draw their batches from the grown pool (the Trainer fixes the number of steps per epoch
when training starts, so an epoch takes that many batches, now sampled from more rows). The rows generated so far are
kept in OUTPUT_DIR/contrastive_explore_pool.jsonl (with the step that made them), so a resumed run starts from the rows
of its checkpoint. (The reference's other iterative variant, which trains the *base* between samples, is
:func:`ftplugins.tools.cge_explore.explore`.) This module stays light: torch is imported inside the hooks.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_range
from ftplugins.plugin import Plugin, hookimpl

POOL_FILE = "contrastive_explore_pool.jsonl"


@dataclass
class ContrastiveExploreOptions:
    contrastive_explore_every: int = field(default=0, metadata={
        "help": "Generate every N optimizer steps (0: at the end of every epoch)."})
    contrastive_explore_samples: int = field(default=4, metadata={"help": "Sequences generated per round."})
    contrastive_explore_prompt: str = field(default="", metadata={
        "help": "Text the samples start from, after BOS (default: nothing, unconditional as the reference)."})
    contrastive_explore_alpha: float = field(default=0.1, metadata={"help": "Plausibility cutoff α (reference 0.1)."})
    contrastive_explore_gamma: float = field(default=1.0, metadata={"help": "Weight γ of the base's log-probs."})
    contrastive_explore_max_new_tokens: int = field(default=64, metadata={"help": "Tokens per sample."})
    contrastive_explore_temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature over the contrastive scores (samples differ within a round)."})

    def __post_init__(self):
        check_range("contrastive_explore_every", self.contrastive_explore_every, 0, 1 << 30)
        check_range("contrastive_explore_samples", self.contrastive_explore_samples, 1, 1 << 20)
        check_range("contrastive_explore_alpha", self.contrastive_explore_alpha, 0.0, 1.0)
        check_range("contrastive_explore_gamma", self.contrastive_explore_gamma, -100.0, 100.0)
        check_range("contrastive_explore_max_new_tokens", self.contrastive_explore_max_new_tokens, 1, 1 << 20)
        check_range("contrastive_explore_temperature", self.contrastive_explore_temperature, 1e-6, 100.0)


class ContrastiveExplorePlugin(Plugin):
    name = "contrastive_explore"
    summary = ("Iterative CGE: between rounds, sample sequences contrasted with the base model (adapter disabled) "
               "and add them to the training pool.")
    paper = "Contrastive generative exploration (CGE), arXiv:2410.14765"
    options = ContrastiveExploreOptions
    distributed = ("single",)
    distributed_refusals = {"ddp": "each process would sample its own rows, so the processes' pools would differ",
                            "fsdp": "each process would sample its own rows, so the processes' pools would differ",
                            "deepspeed": "each process would sample its own rows, so the processes' pools would differ"}
    trainers = ("SFTTrainer",)
    excludes = {"loss": "adds generated rows that hold tokens only, without the per-row columns a custom loss reads "
                        "(reference log-probs, edit targets)"}

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        from .cge_pool import start_pool

        start_pool(run, trainer, run.options_for(self), resume_from_checkpoint)

    @hookimpl
    def callbacks(self, run):
        from .cge_pool import ExploreCallback

        return [ExploreCallback(run, run.options_for(self))]


plugin = ContrastiveExplorePlugin()
