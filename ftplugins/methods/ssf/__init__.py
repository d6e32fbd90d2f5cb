"""SSF: Scaling & Shifting your Features (Lian et al., NeurIPS 2022).

Every Linear, Conv2d, LayerNorm and RMSNorm output y becomes γ⊙y + β with one learned scale γ and
shift β per channel; only γ, β and the classifier head train. The adapter is a real PEFT tuner
(``peft_type`` "SSF"): it trains through TRL's ``peft_config=``, saves with ``save_pretrained`` and
loads in a fresh process with ``ftplugins.load_adapter`` or PEFT's own loaders.

Differences from the reference code (dongzelian/SSF), on purpose:

* Init is the identity (γ=1, β=0), so the adapted model starts exactly at the base model; the
  reference draws γ~N(1, 0.02), β~N(0, 0.02). ``ssf_init="normal"`` reproduces it.
* Modules without a bias (Llama's projections, RMSNorm) get a scale only, because a shift there
  cannot be merged without adding a bias. ``ssf_shift_without_bias=True`` adds the shift; such an
  adapter then works unmerged but ``merge_and_unload()`` refuses it, naming the modules.
* Targets are not the ViT-specific insertion points of the reference but every module of the kinds
  above except the output head, for any architecture.

``merge_and_unload()`` folds γ, β into the weights (W'=diag(γ)W, b'=γ⊙b+β), leaving the base
architecture with no extra parameters.

This module imports no torch: the tuner lives in ``config``/``model``/``layer`` and is imported
when the hook runs.
"""

from ftplugins.plugin import Plugin, hookimpl

from .options import SSFOptions


class SSFPlugin(Plugin):
    name = "ssf"
    summary = "Scale and shift every feature channel (γ⊙y+β): a mergeable PEFT adapter"
    paper = (
        "Lian et al., Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning, "
        "NeurIPS 2022, arXiv:2210.08823"
    )
    options = SSFOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains its scales and shifts only (the base model frozen)",
        "adapter": "adds the SSF adapter",
    }
    distributed = ("single", "ddp", "fsdp", "deepspeed")
    #: The PEFT type this plugin owns: ``load_tuner`` registers it as soon as ``peft`` is imported.
    peft_type = "SSF"

    def load_tuner(self) -> None:
        """Import the tuner, which registers the SSF type with PEFT."""
        from . import config  # noqa: F401

    @hookimpl
    def peft_config(self, run, model):
        from .config import SSFConfig

        opts = run.options_for(self) or SSFOptions()
        return SSFConfig(
            target_modules=_copy(opts.ssf_target_modules),
            exclude_modules=_copy(opts.ssf_exclude_modules),
            modules_to_save=_copy(opts.ssf_modules_to_save),
            init_weights=opts.ssf_init == "identity",
            shift_without_bias=opts.ssf_shift_without_bias,
        )


def _copy(names):
    # PEFT fills the config in place when it resolves defaults; keep the user's options untouched.
    return list(names) if names is not None else None


plugin = SSFPlugin()
