"""Options of LiST self-training (defaults from the paper / microsoft/LiST where they fit a CPU test budget)."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_range


@dataclass
class ListSelftrainOptions:
    list_selftrain_sessions: int = field(default=6, metadata={"help": "Self-training sessions S (the paper: 6)."})
    list_selftrain_steps: int = field(default=100, metadata={"help": "Student steps on unlabelled data per session."})
    list_selftrain_batch_size: int = field(default=16, metadata={"help": "Unlabelled batch size (the paper: 16)."})
    list_selftrain_lr: float = field(default=1e-4, metadata={"help": "Student learning rate (the paper: 1e-4)."})
    list_selftrain_meta_lr: float = field(
        default=1e-4, metadata={"help": "η of the virtual SGD step of the meta re-weighting."})
    list_selftrain_warmup: float = field(
        default=0.6, metadata={"help": "Share of each session with uniform weights before meta re-weighting."})
    list_selftrain_labelled_steps: int = field(
        default=10, metadata={"help": "Labelled fine-tuning steps closing each session."})
    list_selftrain_seed: int = field(default=0, metadata={"help": "Seed of the batch order of the sessions."})

    def __post_init__(self):
        check_range("list_selftrain_sessions", self.list_selftrain_sessions, 1, 1000)
        check_range("list_selftrain_steps", self.list_selftrain_steps, 1, 10**7)
        check_range("list_selftrain_batch_size", self.list_selftrain_batch_size, 1, 10**6)
        check_range("list_selftrain_lr", self.list_selftrain_lr, 0.0, 1.0)
        check_range("list_selftrain_meta_lr", self.list_selftrain_meta_lr, 0.0, 1.0)
        check_range("list_selftrain_warmup", self.list_selftrain_warmup, 0.0, 1.0)
        check_range("list_selftrain_labelled_steps", self.list_selftrain_labelled_steps, 0, 10**7)
