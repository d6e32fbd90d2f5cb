"""Diffusion fine-tuning on the Trainer path: :class:`DiffusionTrainer` over a diffusers denoiser, so every
ftplugins hook applies to text-to-image models (``ftplugins.compose(DiffusionTrainer, ["ssf"])``).

Needs diffusers (``pip install 'ftplugins[diffusion]'``). Tiny offline components: :mod:`ftplugins.diffusion.tiny`.
"""

from .collator import ImageCaptionCollator
from .config import DiffusionConfig
from .trainer import DiffusionTrainer

__all__ = ["DiffusionConfig", "DiffusionTrainer", "ImageCaptionCollator"]

from ftplugins.patching import family_imported  # noqa: E402

family_imported(__name__)  # inside `python -m ftplugins.run`: DiffusionTrainer is patched now that it exists
