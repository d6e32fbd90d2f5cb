"""Options of gan_augment. MhERGAN's details are not public (the seed is an abstract): the choices made where it is
silent are stated in the help of each option and in the package docstring."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

SAMPLERS = ("mh", "plain")


@dataclass
class GanAugmentOptions:
    gan_augment_label_column: str = field(default="label", metadata={
        "help": "Column of each row's class; the GAN is conditioned on it and every synthetic row carries one."})
    gan_augment_feature_columns: str = field(default="", metadata={
        "help": "Comma-separated numeric feature columns the GAN models; default: every numeric column except the "
                "label and the marker column."})
    gan_augment_image_column: str = field(default="", metadata={
        "help": "A column of small images (nested lists, arrays or PIL images, all of one shape): the GAN models "
                "their pixels, flattened (our choice: the same MLP GAN; for small images only), instead of feature "
                "columns; synthetic images keep the real ones' shape, dtype and value range. Default: tabular rows."})
    gan_augment_ratio: float = field(default=1.0, metadata={
        "help": "Synthetic rows per real row, per class (1.0 doubles each class)."})
    gan_augment_marker_column: str = field(default="synthetic", metadata={
        "help": "Boolean column added to the augmented split: True on synthetic rows, False on real ones."})
    gan_augment_sampler: str = field(default="mh", metadata={
        "help": "'mh': Metropolis-Hastings over the calibrated discriminator ensemble's scores (MH-GAN); 'plain': "
                "the generator's samples as they come (the plain-GAN baseline)."})
    gan_augment_discriminators: int = field(default=3, metadata={
        "help": "Discriminators in the ensemble (each its own init and minibatch order); their logits are averaged."})
    gan_augment_chain_length: int = field(default=20, metadata={
        "help": "Generator proposals per MH chain; each synthetic row is the state of one chain after them."})
    gan_augment_steps: int = field(default=600, metadata={"help": "GAN training steps (one D and one G update each)."})
    gan_augment_noise_dim: int = field(default=8, metadata={"help": "Dimension of the generator's noise."})
    gan_augment_hidden: int = field(default=64, metadata={"help": "Width of the generator's and discriminators' MLPs."})
    gan_augment_lr: float = field(default=2e-3, metadata={"help": "Adam learning rate of both networks."})
    gan_augment_seed: int = field(default=0, metadata={"help": "Seed of the GAN and sampler: same seed, same rows."})

    def __post_init__(self):
        check_choice("gan_augment_sampler", self.gan_augment_sampler, SAMPLERS)
        check_range("gan_augment_ratio", self.gan_augment_ratio, 0.0, 1000.0)
        check_range("gan_augment_discriminators", self.gan_augment_discriminators, 1, 64)
        check_range("gan_augment_chain_length", self.gan_augment_chain_length, 1, 100_000)
        check_range("gan_augment_steps", self.gan_augment_steps, 1, 10_000_000)
        check_range("gan_augment_noise_dim", self.gan_augment_noise_dim, 1, 4096)
        check_range("gan_augment_hidden", self.gan_augment_hidden, 1, 65536)
        check_range("gan_augment_lr", self.gan_augment_lr, 1e-8, 1.0)
        for name in ("gan_augment_label_column", "gan_augment_marker_column"):
            if not getattr(self, name):
                raise ValueError(f"--{name} '': expected a column name")
        if self.gan_augment_image_column and self.gan_augment_feature_columns:
            raise ValueError("--gan_augment_image_column and --gan_augment_feature_columns: give one of them (the GAN "
                             "models either an image column or numeric feature columns).")
        if self.gan_augment_marker_column == self.gan_augment_label_column:
            raise ValueError(f"--gan_augment_marker_column {self.gan_augment_marker_column!r}: it is the label column; "
                             "pick another name")

    def feature_columns(self) -> list[str]:
        return [c.strip() for c in self.gan_augment_feature_columns.split(",") if c.strip()]
