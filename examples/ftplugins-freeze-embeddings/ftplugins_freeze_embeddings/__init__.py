"""Freeze the input embeddings (and optionally the output head) during fine-tuning.

A complete third-party plugin: an options dataclass (fields prefixed with the plugin name), a
plugin object with one hook, and an entry point in pyproject.toml. Nothing heavy is imported at
module level, so ``ftplugins list`` stays fast.
"""

from dataclasses import dataclass, field

from ftplugins import Plugin, hookimpl
from ftplugins.errors import UnsupportedModelError


@dataclass
class FreezeEmbeddingsOptions:
    freeze_embeddings_output: bool = field(
        default=False, metadata={"help": "Also freeze the output embeddings (the LM head)."}
    )


class FreezeEmbeddingsPlugin(Plugin):
    name = "freeze_embeddings"
    summary = "Freeze the input embeddings (and optionally the LM head) while fine-tuning."
    options = FreezeEmbeddingsOptions
    distributed = ("single", "ddp", "fsdp", "deepspeed")

    @hookimpl
    def prepare_model(self, run, model):
        options = run.options_for(self)
        modules = [model.get_input_embeddings()]
        if options.freeze_embeddings_output:
            modules.append(model.get_output_embeddings())
        if any(m is None for m in modules):
            raise UnsupportedModelError(
                f"freeze_embeddings: {type(model).__name__} has no input/output embeddings to freeze."
            )
        for module in modules:
            module.requires_grad_(False)
        return model


plugin = FreezeEmbeddingsPlugin()
