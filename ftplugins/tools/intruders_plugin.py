"""The ``intruders`` plugin: log intruder-dimension counts every N optimizer steps during training.

The counts (:mod:`ftplugins.tools.intruders`) go to the Trainer's log as ``intruders/total`` and
``intruders/<matrix kind>``. For adapter runs the pre-trained matrices are the frozen base weights (each
adapted layer is merged in memory, read and restored bit for bit); for full fine-tuning a CPU copy of the
selected matrices is taken when training begins (about the size of those matrices). This module stays
light: torch is imported inside the callback.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field
from typing import Optional

from ftplugins.distributed_reasons import MAIN_READS_WHOLE_FSDP, MAIN_READS_WHOLE_ZERO
from ftplugins.options import check_range
from ftplugins.plugin import Plugin, hookimpl


@dataclass
class IntrudersOptions:
    intruders_every: int = field(default=100, metadata={"help": "Count intruder dimensions every N optimizer steps."})
    intruders_k: int = field(default=10, metadata={"help": "Top fine-tuned singular vectors examined per matrix."})
    intruders_epsilon: float = field(default=0.5, metadata={
        "help": "Cosine threshold: a fine-tuned singular vector is an intruder when no pre-trained one is closer."})
    intruders_include: Optional[str] = field(default=None, metadata={
        "help": "Regular expression of matrix names (default: every 2-D weight but embeddings and output head)."})

    def __post_init__(self):
        for name in ("intruders_every", "intruders_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected a positive whole number")
        check_range("intruders_epsilon", self.intruders_epsilon, 1e-9, 1.0)


class IntrudersPlugin(Plugin):
    name = "intruders"
    summary = "Log intruder-dimension counts (new singular directions unlike the pre-trained ones) during training."
    paper = "Shuttleworth et al., arXiv:2410.21228"
    options = IntrudersOptions
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": MAIN_READS_WHOLE_FSDP, "deepspeed": MAIN_READS_WHOLE_ZERO}  # SVDs every N steps

    @hookimpl
    def callbacks(self, run):
        from .intruders_callback import IntrudersCallback

        return [IntrudersCallback(run, run.options_for(self))]


plugin = IntrudersPlugin()
