"""Block-LoRA: "One Head Eight Arms: Block Matrix based Low Rank Adaptation" (arXiv 2501.16720).

What is implemented (a reconstruction: the paper's method section was not reachable and no code for
the paper was found, see ``shared/methods/C-no-code-details.md`` §1). LoRA's update ΔW = s·B·A is
viewed as a block matrix: A ∈ R^{r×d_in} is split column-wise into n blocks A_j ∈ R^{r×(d_in/n)} and
all of them are shared, A_j ≡ A*, so

    ΔW = s·B·[A*, A*, ..., A*],    ΔW x = s·B·A*·(Σ_j x_j)

where x_j are the n chunks of the input. The forward pass adds the chunks and runs one small
projection: n matmuls become additions, as the abstract says. An adapted layer trains
r·d_out + r·d_in/n parameters instead of LoRA's r·(d_out + d_in). The adapter is a real PEFT tuner
(``peft_type`` "BLOCK_LORA", prefix ``block_lora_``): it trains through TRL's ``peft_config=``,
saves with ``save_pretrained``, loads in a fresh process with ``ftplugins.load_adapter`` and merges
with ``merge_and_unload()`` (W' = W + ΔW, the base architecture with no extra parameters).

Choices, each an assumption where the paper could not be read:

* Which factor is shared: the down-projection blocks (the abstract: "all down-projection
  sub-matrices are shared"), split along d_in. Not implemented: the alternative reading that splits
  along the rank, ΔW = Σ_i B_i·A* = (Σ_i B_i)·A*, which is plain LoRA with a smaller rank.
* n = 8 by default (the title's "eight arms"); every adapted layer's d_in must be divisible by n,
  checked for all targets before any layer is replaced (``UnsupportedModelError`` names them).
* r = 2, dropout 0.25 on the adapter input, targets q/k/v in every layer: CLIP-LoRA's defaults, the
  baseline whose protocol the paper follows. alpha = r (scale 1 at every rank, PEFT LoRA's default), not
  CLIP-LoRA's fixed 1: at LoRA's learning rate alpha 1 left MiniLM near chance at r = 8 (its scale 1/8 acts as
  an 8x smaller learning rate; alpha 1 at 16x the rate learned), and the tiny decoder's learning-rate sweep
  picked 10x LoRA's rate for it (BENCHMARKS.md, ``block-lora-scale``). ``all-linear`` adapts
  every linear layer except the output head.
* Init as standard LoRA: A* Kaiming-uniform, B = 0, so the adapted model starts exactly at the base.
* Supports torch Linear (including bitsandbytes 4-bit / 8-bit layers, unmerged) and transformers'
  Conv1D; diffusers UNets through ``add_adapter`` / ``peft.inject_adapter_in_model``. Merging into a
  quantized base is refused (merge into a full-precision copy instead).

This module imports no torch: the tuner lives in ``config``/``model``/``layer`` and is imported when
the hook runs.
"""

from ftplugins.plugin import Plugin, hookimpl

from .options import ALL_LINEAR, BlockLoraOptions


class BlockLoraPlugin(Plugin):
    name = "block_lora"
    summary = "LoRA whose down-projection is one block shared by n input chunks: ΔW = s·B·[A*, ..., A*], mergeable"
    paper = (
        "One Head Eight Arms: Block Matrix based Low Rank Adaptation for CLIP-based Few-Shot Learning, "
        "arXiv:2501.16720 (2025)"
    )
    options = BlockLoraOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "trainable_set": "trains its Block-LoRA factors only (the base model frozen)",
        "adapter": "adds the Block-LoRA adapter",
    }
    distributed = ("single", "ddp", "fsdp", "deepspeed")
    #: The PEFT type this plugin owns: ``load_tuner`` registers it as soon as ``peft`` is imported.
    peft_type = "BLOCK_LORA"

    def load_tuner(self) -> None:
        """Import the tuner, which registers the BLOCK_LORA type with PEFT."""
        from . import config  # noqa: F401

    @hookimpl
    def peft_config(self, run, model):
        from .config import BlockLoraConfig

        opts = run.options_for(self) or BlockLoraOptions()
        targets = _copy(opts.block_lora_target_modules)
        return BlockLoraConfig(
            num_blocks=opts.block_lora_n,
            r=opts.block_lora_r,
            alpha=opts.block_lora_alpha,
            dropout=opts.block_lora_dropout,
            target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else targets,
            exclude_modules=_copy(opts.block_lora_exclude_modules),
            modules_to_save=_copy(opts.block_lora_modules_to_save),
        )


def _copy(names):
    # PEFT fills the config in place when it resolves defaults; keep the user's options untouched.
    return list(names) if names is not None else None


plugin = BlockLoraPlugin()
