"""Options of LEVI. The paper leaves the layers, the small model and the ensembling open (spec C §4): the choices
here are written down in each help text."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

ENSEMBLES = ("mean_probs", "mean_logits")


@dataclass
class LeviOptions:
    levi_layers: list[int] = field(
        default_factory=lambda: [-3, -2, -1],
        metadata={"help": "Hidden-state layers of the pre-trained model that get an adapting head (Python indices "
                  "into hidden_states; default the last three, our choice)."},
    )
    levi_small_dim: int = field(
        default=64, metadata={"help": "Width of the small task model trained from scratch: a token-embedding bag "
                              "(mean over the attention mask) and one MLP layer (our choice)."})
    levi_head_dim: int = field(default=128, metadata={"help": "Hidden width of each adapting MLP head."})
    levi_ensemble: str = field(
        default="mean_probs",
        metadata={"help": "How the heads' predictions combine at inference: 'mean_probs' (the returned logits are "
                  "the log of the mean probability) or 'mean_logits'. Training uses the mean of the heads' CE."},
    )

    def __post_init__(self):
        if not self.levi_layers:
            raise ValueError("--levi_layers []: expected at least one layer index, e.g. -1")
        check_range("levi_small_dim", self.levi_small_dim, 1, 1 << 16)
        check_range("levi_head_dim", self.levi_head_dim, 1, 1 << 16)
        check_choice("levi_ensemble", self.levi_ensemble, ENSEMBLES)
