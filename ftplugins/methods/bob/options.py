"""Options of BOB. The paper's attributes are scene background and object pose; here any named, class-agnostic
attribute works: the caption template declares them."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice

MARGINALIZE = ("pool", "independent")


@dataclass
class BobOptions:
    bob_template: str = field(default="a photo of a {class}, {background}", metadata={
        "help": "Caption of every real image during fine-tuning: '{class}' (required, once) is the class name, every "
                "other '{name}' an attribute of that name; attributes go exactly there and nowhere else."})
    bob_class_column: str = field(default="label", metadata={
        "help": "Dataset column of the class (a name, or a ClassLabel index whose names are used)."})
    bob_attribute_fn: str = field(default="", metadata={
        "help": "'package.module:function' called as function(image (PIL), row (dict)) -> {attribute: text} for "
                "each real image; default: read each attribute from the dataset column of the same name. No "
                "captioning model is built in (none is available offline)."})
    bob_marginalize: str = field(default="pool", metadata={
        "help": "How generation draws attributes, independently of the class: 'pool' (all attributes of one real "
                "image, any class, uniformly) or 'independent' (each attribute from its own frequency over the "
                "real images)."})

    def __post_init__(self):
        check_choice("bob_marginalize", self.bob_marginalize, MARGINALIZE)
        from .template import CaptionTemplate

        try:
            CaptionTemplate(self.bob_template)
        except Exception as exc:  # FtpluginsError -> ValueError: the options machinery names the option
            raise ValueError(str(exc)) from None
        if not self.bob_class_column:
            raise ValueError("--bob_class_column '': expected the dataset column that holds each image's class")
