"""Options of PET with adapters (pattern-exploiting training; the PETapter formulation).

A pattern is a cloze with ``{text}`` and one ``{mask}`` (replaced by m mask tokens); a verbaliser entry is
``label:word`` or, for m > 1, ``label:word1 word2`` (one vocabulary token per word, every label the same m).
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

ADAPTERS = ("lora", "ia3", "none")


@dataclass
class PetOptions:
    pet_verbalizer: list[str] | None = field(
        default=None,
        metadata={"help": "One 'label:word' entry per class ('label:w1 w2' for m mask tokens, one vocabulary token "
                  "per word); required."},
    )
    pet_patterns: list[str] = field(
        default_factory=lambda: ["{text} It was {mask}."],
        metadata={"help": "Cloze patterns with {text} and one {mask}; several patterns train together and are "
                  "ensembled (mean label probability) by ftplugins.methods.pet.predict."},
    )
    pet_text_column: str = field(default="text", metadata={"help": "Dataset column with the input text."})
    pet_label_column: str = field(default="label", metadata={"help": "Dataset column with the class (a label "
                                  "name of the verbaliser, or its index in pet_verbalizer)."})
    pet_adapter: str = field(
        default="lora",
        metadata={"help": "The PEFT module that trains in the frozen encoder: 'lora', 'ia3', or 'none' (an adapter "
                  "from another plugin such as bottleneck / ssf, one already on the model, or the head alone)."},
    )
    pet_lora_r: int = field(default=8, metadata={"help": "LoRA rank (pet_adapter=lora), on query and value."})
    pet_max_length: int = field(default=128, metadata={"help": "Token budget of a filled pattern."})

    def __post_init__(self):
        check_choice("pet_adapter", self.pet_adapter, ADAPTERS)
        check_range("pet_lora_r", self.pet_lora_r, 1, 4096)
        check_range("pet_max_length", self.pet_max_length, 8, 1 << 20)
        if not self.pet_patterns:
            raise ValueError("--pet_patterns []: expected at least one pattern with {text} and {mask}")
        for pattern in self.pet_patterns:
            if pattern.count("{mask}") != 1 or "{text}" not in pattern:
                raise ValueError(f"--pet_patterns {pattern!r}: expected a cloze with {{text}} and exactly one "
                                 "{mask}, e.g. '{text} It was {mask}.'")
        if self.pet_verbalizer is not None:
            labels = [entry.split(":", 1)[0].strip() for entry in self.pet_verbalizer]
            if len(labels) < 2 or any(":" not in e or not e.split(":", 1)[1].strip() for e in self.pet_verbalizer):
                raise ValueError(f"--pet_verbalizer {self.pet_verbalizer!r}: expected at least two 'label:word' "
                                 "entries, e.g. pos:great neg:terrible")
            if len(set(labels)) != len(labels):
                raise ValueError(f"--pet_verbalizer {self.pet_verbalizer!r}: a label is listed twice")
