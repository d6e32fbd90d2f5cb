"""Options of deep safety alignment (token-wise constrained SFT and safety-recovery augmentation).

Defaults follow the reference (Unispac/shallow-vs-deep-alignment, finetuning_buckets/trainer):
beta 0.1, first-token factor 5, bias factor 20 over the first 5 response tokens, so
beta_1 = 0.5, beta_2..5 = 2.0, beta_t>5 = 0.1; augmentation with probability 0.5 and harmful
prefixes of at most 100 tokens.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
import math
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

OBJECTIVES = ("constrained", "sft")
REFERENCES = ("precompute", "on_the_fly")


@dataclass
class DeepAlignOptions:
    deep_align_objective: str = field(
        default="constrained",
        metadata={
            "help": "'constrained': the token-wise constrained objective (paper section 4), each response token's "
            "NLL weighted by 2(1 - sigmoid(beta_t (log p - log p_ref))). 'sft': plain SFT loss (e.g. the "
            "augmentation-only experiment of section 3); no reference is computed."
        },
    )
    deep_align_beta: float = field(
        default=0.1,
        metadata={"help": "Base beta of the constraint, used after the first deep_align_bias_length response tokens; "
                  "0 gives plain SFT weights (w = 1)."},
    )
    deep_align_first_token_factor: float = field(
        default=5.0,
        metadata={"help": "beta of the first response token = deep_align_beta * this (0.5 by default)."},
    )
    deep_align_bias_factor: float = field(
        default=20.0,
        metadata={
            "help": "beta of response tokens 2..deep_align_bias_length = deep_align_beta * this (2.0 by default)."
        },
    )
    deep_align_bias_length: int = field(
        default=5,
        metadata={"help": "Number of leading response tokens with the larger beta (the first one uses "
                  "deep_align_first_token_factor); 0 uses deep_align_beta everywhere."},
    )
    deep_align_ref: str = field(
        default="precompute",
        metadata={
            "help": "Reference log-probs of the initial model: 'precompute' (one pass over the training set before "
            "training, stored with the rows; no reference model during training) or 'on_the_fly' (one extra no-grad "
            "forward per batch; with a PEFT adapter the reference is the adapter-disabled model, with full "
            "fine-tuning a frozen copy of the model is kept: one more set of weights)."
        },
    )
    deep_align_disable_dropout: bool = field(
        default=True,
        metadata={"help": "Turn dropout off in the trained model, as the reference does, so that the policy and the "
                  "reference see the same deterministic network (w = 1 exactly at the start)."},
    )
    deep_align_augment: bool = field(
        default=False,
        metadata={
            "help": "Safety-recovery augmentation (paper section 3): rows with harmful_response and refusal columns "
            "become (prompt + first k harmful tokens -> refusal) with probability deep_align_augment_prob, else "
            "(prompt -> refusal), loss on the refusal only; rows with a completion instead are the utility set "
            "(plain prompt -> completion)."
        },
    )
    deep_align_augment_prob: float = field(
        default=0.5,
        metadata={"help": "Probability that a safety row gets a harmful prefix."},
    )
    deep_align_augment_max_prefix: int = field(
        default=100,
        metadata={"help": "k is drawn uniformly from 1..min(this, harmful response tokens)."},
    )
    deep_align_harmful_column: str = field(
        default="harmful_response",
        metadata={"help": "Column of the harmful response (null on utility rows)."},
    )
    deep_align_refusal_column: str = field(
        default="refusal",
        metadata={"help": "Column of the refusal (null on utility rows)."},
    )

    def __post_init__(self):
        check_choice("deep_align_objective", self.deep_align_objective, OBJECTIVES)
        check_choice("deep_align_ref", self.deep_align_ref, REFERENCES)
        for name in ("deep_align_beta", "deep_align_first_token_factor", "deep_align_bias_factor"):
            check_range(name, getattr(self, name), 0.0, math.inf)
        if self.deep_align_bias_length < 0:
            raise ValueError(f"--deep_align_bias_length {self.deep_align_bias_length!r}: expected 0 or more")
        check_range("deep_align_augment_prob", self.deep_align_augment_prob, 0.0, 1.0)
        if self.deep_align_augment_max_prefix < 1:
            raise ValueError(
                f"--deep_align_augment_max_prefix {self.deep_align_augment_max_prefix!r}: expected 1 or more"
            )
