"""Options of SAMDA. The paper's adaptation module is not public: the fusion chosen here is written down in the help
texts and in :mod:`.model`."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

FUSIONS = ("add", "none")


@dataclass
class SamdaOptions:
    samda_encoder: str = field(
        default="",
        metadata={"help": "The frozen 'generic' image encoder: a folder or Hub id that transformers' AutoModel loads "
                  "(a SamModel — its vision encoder is used — a SamVisionModel, or any image encoder whose "
                  "last_hidden_state is a feature map or a square grid of patch tokens). Required."},
    )
    samda_bottleneck: str = field(
        default="mid_block",
        metadata={"help": "Module of the expert whose output is the bottleneck the generic features are fused into "
                  "(diffusers' UNet2DModel: mid_block)."},
    )
    samda_fusion: str = field(
        default="add",
        metadata={"help": "'add': bottleneck + A(resize(generic)), A = 1x1 conv, GELU, 1x1 conv with the last conv "
                  "zero-initialised, so training starts from the expert alone (our choice: the paper's fusion is "
                  "not public). 'none': no fusion, the expert alone (the ablation baseline)."},
    )
    samda_adapter_lr_scale: float = field(
        default=10.0,
        metadata={"help": "The adaptation module's learning rate is learning_rate x this (the rest: learning_rate). "
                  "Its last conv starts at zero, and at the expert's rate it barely moves in a few-shot run (the "
                  "fusion stayed unused and SAMDA equalled the expert); 10 let it learn (BENCHMARKS.md, "
                  "samda-diagnosis). 1: one rate for all."},
    )
    samda_dice_weight: float = field(default=1.0, metadata={"help": "Weight of the soft Dice loss."})
    samda_ce_weight: float = field(default=1.0, metadata={"help": "Weight of the pixel-wise cross-entropy."})
    samda_image_column: str = field(default="image", metadata={"help": "Dataset column of the images (C, H, W) or "
                                                               "(H, W), or PIL images."})
    samda_mask_column: str = field(default="mask", metadata={"help": "Dataset column of the masks: (H, W) class "
                                                             "indices 0..K-1, K the expert's output channels."})

    def __post_init__(self):
        check_choice("samda_fusion", self.samda_fusion, FUSIONS)
        if not self.samda_adapter_lr_scale > 0:
            raise ValueError(f"--samda_adapter_lr_scale {self.samda_adapter_lr_scale!r}: expected a value > 0")
        check_range("samda_dice_weight", self.samda_dice_weight, 0.0, 1e6)
        check_range("samda_ce_weight", self.samda_ce_weight, 0.0, 1e6)
        if self.samda_dice_weight == 0 and self.samda_ce_weight == 0:
            raise ValueError("--samda_dice_weight 0 --samda_ce_weight 0: expected at least one positive loss weight")
