"""The ``probe_prune`` plugin: the probing / pruning analysis of the run's own fine-tune (Jain et al., 2311.12786).

At ``train_begin`` (before any checkpoint is loaded, so these are the pre-trained weights) the main process keeps a
CPU copy of the model; every ``probe_prune_every`` optimizer steps a callback logs the per-layer probe accuracy
(``probe_prune/layer_<i>``); at ``post_train`` the whole analysis (:mod:`ftplugins.tools.probe_prune`) compares the
copy with the trained model (a PEFT model is merged into a copy first) and writes OUTPUT_DIR/probe_prune.json and
.png, logging the headline numbers. The copy costs one model's size in CPU memory. This module stays light.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.distributed_reasons import MAIN_READS_WHOLE_FSDP, MAIN_READS_WHOLE_ZERO
from ftplugins.errors import FtpluginsError
from ftplugins.options import check_choice, check_range
from ftplugins.plugin import Plugin, hookimpl


@dataclass
class ProbePruneOptions:
    probe_prune_data: str = field(default="", metadata={
        "help": "Texts labelled with a pre-training property (.jsonl/.json/.csv with text and label). Required."})
    probe_prune_text_field: str = field(default="text", metadata={"help": "The texts' column."})
    probe_prune_label_field: str = field(default="label", metadata={"help": "The property's column."})
    probe_prune_units: str = field(default="1,4,16", metadata={
        "help": "How many of the most-changed MLP units to prune, comma separated ('0': no pruning)."})
    probe_prune_mode: str = field(default="zero", metadata={
        "help": "'zero' (prune: the unit's output is set to 0) or 'revert' (the unit gets its pre-trained weights)."})
    probe_prune_reverse_steps: int = field(default=0, metadata={
        "help": "Reverse fine-tuning steps on the texts, from the fine-tune and from a fresh control (0: skip)."})
    probe_prune_reverse_lr: float = field(default=1e-3, metadata={"help": "Reverse fine-tuning learning rate."})
    probe_prune_every: int = field(default=0, metadata={
        "help": "Also log the per-layer probe accuracy every N optimizer steps (0: only the final report)."})
    probe_prune_probe: str = field(default="auto", metadata={
        "help": "Probe fitter: 'sklearn' (scikit-learn's LogisticRegression), 'torch', or 'auto' (sklearn if "
                "installed)."})

    def __post_init__(self):
        check_choice("probe_prune_mode", self.probe_prune_mode, ("zero", "revert"))
        check_choice("probe_prune_probe", self.probe_prune_probe, ("auto", "sklearn", "torch"))
        check_range("probe_prune_reverse_steps", self.probe_prune_reverse_steps, 0, 1 << 20)
        check_range("probe_prune_reverse_lr", self.probe_prune_reverse_lr, 1e-12, 10.0)
        check_range("probe_prune_every", self.probe_prune_every, 0, 1 << 30)

    def unit_counts(self) -> list:
        from ftplugins.eval.report import parse_ks

        return [] if self.probe_prune_units.strip() == "0" else parse_ks(self.probe_prune_units, "--probe_prune_units")


class ProbePrunePlugin(Plugin):
    name = "probe_prune"
    summary = ("Probe a pre-training property per layer before/after fine-tuning, prune the units tuning changed "
               "most, reverse-tune; JSON + PNG.")
    paper = "Jain et al., Mechanistically analyzing the effects of fine-tuning, arXiv:2311.12786"
    options = ProbePruneOptions
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": MAIN_READS_WHOLE_FSDP, "deepspeed": MAIN_READS_WHOLE_ZERO}  # initial vs trained
    trainers = ("SFTTrainer", "DPOTrainer", "GRPOTrainer")  # causal LMs: the behaviour is the next-token distribution

    @hookimpl
    def validate(self, run):
        from .probe_prune import encode_labels, load_texts

        opts = run.options_for(self)
        if not opts.probe_prune_data:
            raise FtpluginsError("probe_prune: no texts to probe; set --probe_prune_data FILE (rows with a text and "
                                 "a label of the pre-training property)")
        opts.unit_counts()
        _texts, labels = load_texts(opts.probe_prune_data, opts.probe_prune_text_field, opts.probe_prune_label_field)
        encode_labels(labels)  # one label only fails before the model loads

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        if not trainer.is_world_process_zero():
            return
        from .probe_prune_callback import initial_copy

        run.state[self.name] = {"initial": initial_copy(trainer)}

    @hookimpl
    def callbacks(self, run):
        opts = run.options_for(self)
        if not opts.probe_prune_every:
            return []
        from .probe_prune_callback import ProbeEveryCallback

        return [ProbeEveryCallback(run, opts)]

    @hookimpl
    def post_train(self, run, trainer):
        if not trainer.is_world_process_zero():
            return
        from .probe_prune_callback import analyse_run

        analyse_run(run, trainer, run.options_for(self), run.state[self.name].pop("initial"))


plugin = ProbePrunePlugin()
