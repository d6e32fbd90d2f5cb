"""What every ftplugins PEFT tuner needs to know about the model it adapts.

Shared by the adapter methods (``ssf``, ``bottleneck``, ``block_lora``): the modules of the base
model seen through PEFT wrappers, its output heads (never adapted by default), its classifier head
(trained in full by default), and a one-line description of the model for error messages.
"""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import AuxiliaryTrainingWrapper
from torch import nn

from .errors import UnsupportedModelError

#: Attribute names of the classification heads transformers models use.
CLASSIFIER_HEADS = ("classifier", "score")
#: Class-name endings of models whose head is a freshly initialised classifier.
CLASSIFIER_MODELS = (
    "ForSequenceClassification",
    "ForImageClassification",
    "ForAudioClassification",
    "ForTokenClassification",
)


def unwrapped_modules(model: nn.Module, see_through_aux: bool = True) -> list[tuple[str, nn.Module]]:
    """(name, module) of the base model's modules, seeing through PEFT wrappers added earlier.

    A tuner layer stands for its base layer. A ``modules_to_save`` / trainable-token wrapper
    stands for its original module, or is skipped when ``see_through_aux`` is False.
    """
    found, wrappers = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrappers):
            continue
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            wrappers.append(name)
            if isinstance(module, BaseTunerLayer):
                module = module.get_base_layer()
            elif see_through_aux:
                module = getattr(module, "original_module", module)
            else:
                continue
        found.append((name, module))
    return found


def classifier_heads(model: nn.Module, method: str) -> list[str]:
    """The classifier head of a classification model (trained in full), else []."""
    if not type(model).__name__.endswith(CLASSIFIER_MODELS):
        return []
    heads = [name for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), nn.Module)]
    if not heads:
        raise UnsupportedModelError(
            f"{method}: {describe(model)} has no classifier head named {' or '.join(CLASSIFIER_HEADS)}; "
            f"pass --{method}_modules_to_save with the head's module name."
        )
    return heads


def output_heads(model: nn.Module) -> list[str]:
    """Names of the LM head and classifier heads: never adapted by default."""
    heads = [name for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), nn.Module)]
    try:
        lm_head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        lm_head = None
    if lm_head is not None:
        heads += [name for name, module in model.named_modules() if module is lm_head]
    return heads


def model_type_of(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def describe(model: nn.Module) -> str:
    """``LlamaForCausalLM (model_type llama)``: how error messages name a model."""
    model_type = model_type_of(model)
    return f"{type(model).__name__}" + (f" (model_type {model_type})" if model_type else "")
