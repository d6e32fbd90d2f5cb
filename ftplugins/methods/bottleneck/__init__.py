"""Bottleneck adapters: LLM-Adapters (Hu et al., EMNLP 2023) and PETL for AST (Cappellazzo et al., 2023).

One small network f(z) = s·U·φ(D·drop(z)) (down projection to width b, non-linearity, up projection,
fixed or learned scale) is trained while the base model stays frozen. Two families of placement:

* around named Linear modules, as LLM-Adapters: series on the input side (y = W(x + f(x)) + c), series
  on the output side (y = h + f(h)) or parallel (y = Wx + c + f(x)); presets name the paper's recipes
  (``llama_series``: up/gate, ``llama_parallel``: up/down) and LLM-Adapters' defaults; works on
  bitsandbytes 4-bit / 8-bit bases and on diffusers UNets (``--bottleneck_target_modules to_q ...``);
* around the MHSA / FFN sublayers of ViT, AST, BERT and pre-norm decoder (Llama, Mistral, Qwen2) blocks, as
  PETL-AST: Pfeiffer (FFN) or Houlsby (MHSA and FFN), parallel or sequential, before or after the sublayer, a bottleneck
  (Linear-GELU-Linear) or conformer block; the sublayers' LayerNorms, the final LayerNorm and the head
  train too.

The adapter is a real PEFT tuner (``peft_type`` "BOTTLENECK"): it trains through TRL's
``peft_config=``, saves with ``save_pretrained`` and loads in a fresh process with
``ftplugins.load_adapter``. The bottleneck maths is one torch function,
``ftplugins.kernels.bottleneck.bottleneck_adapter`` (fp32).

Differences from the reference code, on purpose (details in ``layer.py`` and ``blocks.py``): the
default init is an exact identity (up-projection and up-bias zero) where LLM-Adapters' default "bert"
init perturbs the outputs and PETL-AST zeroes every weight so only the up-bias trains (both
offered as ``bottleneck_init`` for reproduction); the sequential block adapter keeps its skip
connection unless ``bottleneck_block_residual=false``; a parallel adapter with φ = identity merges
into W exactly (the references cannot merge).

This module imports no torch: the tuner lives in ``config``/``model``/``layer``/``blocks`` and is
imported when a hook runs.
"""

from ftplugins.plugin import Plugin, hookimpl

from .options import BottleneckOptions


class BottleneckPlugin(Plugin):
    name = "bottleneck"
    summary = "Bottleneck adapters around Linear modules (LLM-Adapters) or transformer sublayers (PETL-AST)"
    paper = (
        "Hu et al., LLM-Adapters: An Adapter Family for Parameter-Efficient Fine-Tuning of Large Language Models, "
        "EMNLP 2023, arXiv:2304.01933; Cappellazzo et al., Parameter-Efficient Transfer Learning of Audio "
        "Spectrogram Transformers, 2023, arXiv:2312.03694"
    )
    options = BottleneckOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains its bottleneck adapters only (the base model frozen)",
        "adapter": "adds bottleneck adapters",
    }
    distributed = ("single", "ddp", "fsdp", "deepspeed")
    #: The PEFT type this plugin owns: ``load_tuner`` registers it as soon as ``peft`` is imported.
    peft_type = "BOTTLENECK"

    def load_tuner(self) -> None:
        """Import the tuner, which registers the BOTTLENECK type with PEFT."""
        from . import config  # noqa: F401

    @hookimpl
    def peft_config(self, run, model):
        from .config import BottleneckConfig

        return BottleneckConfig.from_options(run.options_for(self) or BottleneckOptions())


plugin = BottleneckPlugin()
