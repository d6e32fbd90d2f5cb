"""``DiffusionConfig``: ``transformers.TrainingArguments`` plus what a text-to-image fine-tuning run needs
(the same names as diffusers' ``train_text_to_image.py`` where it has one)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class DiffusionConfig(TrainingArguments):
    prediction_type: str = field(default=None, metadata={
        "help": "epsilon, v_prediction, sample or flow_matching; default: flow_matching for a flow-matching "
                "scheduler, else the noise scheduler's prediction_type."})
    image_column: str = field(default="image", metadata={
        "help": "Dataset column of the images; '' for prompt-only rows (methods that sample their own images, "
                "such as online PSO)."})
    caption_column: str = field(default="caption", metadata={"help": "Dataset column of the captions."})
    resolution: int = field(default=None, metadata={
        "help": "Side of the (square) training images; default: the VAE's sample_size."})
    cache_latents: bool = field(default=False, metadata={
        "help": "Encode every training image with the VAE once before training (a progress bar), then sample "
                "latents from the cached distributions each step (diffusers' --cache_latents)."})
    # The collator needs the image / caption columns, which the denoiser's forward does not take.
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Keep False: the collator reads the image and caption columns."})
