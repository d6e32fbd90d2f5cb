"""Aligned-model prefix defence (AMD) from the NOICE paper: a generation-time defence.

"No, Of Course I Can! Refusal Mechanisms Can Be Exploited Using Harmless Fine-Tuning Data"
(Kazdan et al., arXiv:2502.19537; reference code jlkazdan/NOICE, src/sampling/sample.py).
The original aligned model writes the first k response tokens (k=15); the fine-tuned model
continues from prompt + prefix; the answer is prefix + continuation. Variant: a fixed forced
prefix ("I'm sorry, I cannot").

This is used at **generation / evaluation time**, not during training:

* Python: :func:`ftplugins.methods.aligned_prefix.generate` (``aligned_model, model, tokenizer,
  prompts, k=15``); ``aligned_model=None`` with a PEFT ``model`` writes the prefix with the adapter
  disabled (no second copy of the weights).
* Command line: ``ftplugins generate --model DIR [--adapter DIR] [--aligned DIR] --k 15 --prompt "..."``.

The plugin exists so that the defence is listed (``ftplugins list``/``info``) and its options are
documented; selecting it for a training run is refused in ``validate`` (it would change nothing about
training, and a silent no-op is worse than an error). It has no ``post_train`` report for the same
reason. This module imports no torch.
"""

from __future__ import annotations

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import AlignedPrefixOptions


def generate(aligned_model, model, tokenizer, prompts, k=15, **generate_kwargs):
    """Prefix + continuation for each prompt (see :mod:`.generation`); imports torch lazily."""
    from .generation import generate as _generate

    return _generate(aligned_model, model, tokenizer, prompts, k=k, **generate_kwargs)


def generate_ids(aligned_model, model, tokenizer, prompts, k=15, **generate_kwargs):
    """Response token ids (prefix + continuation, EOS kept, no padding) for each prompt."""
    from .generation import generate_ids as _generate_ids

    return _generate_ids(aligned_model, model, tokenizer, prompts, k=k, **generate_kwargs)


class AlignedPrefixPlugin(Plugin):
    name = "aligned_prefix"
    summary = ("NOICE aligned-model prefix defence: the aligned model writes the first k response tokens "
               "(generation time; use `ftplugins generate`).")
    paper = "No, Of Course I Can! (NOICE), Kazdan et al., arXiv:2502.19537"
    options = AlignedPrefixOptions
    distributed = ("single", "ddp", "fsdp", "deepspeed")
    trains = False

    def add_commands(self, subparsers):
        """``ftplugins generate``."""
        from .cli import add_subparser

        add_subparser(subparsers)

    @hookimpl
    def validate(self, run):
        raise FtpluginsError(
            "aligned_prefix is a generation-time defence (the aligned model writes the first k response tokens, "
            "the fine-tuned model continues); it changes nothing about training. Drop it from --plugins and apply "
            "it when generating: `ftplugins generate --model FINETUNED --aligned ALIGNED --k 15 --prompt ...` "
            "(or --adapter ADAPTER_DIR with the base model), or "
            "ftplugins.methods.aligned_prefix.generate(aligned_model, model, tokenizer, prompts, k=15)."
        )


plugin = AlignedPrefixPlugin()
