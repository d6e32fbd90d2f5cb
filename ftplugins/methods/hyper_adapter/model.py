"""The multitask model: a frozen classifier whose adapters' weights come from the hypernetwork, one head per task.

The adapters are real ``bottleneck`` PEFT modules (series, output side) injected into the classifier; their own
parameters stay frozen and are only placeholders: each forward substitutes the task's generated tensors (and the
task's head) with ``torch.func.functional_call``, so gradients flow into the hypernetwork and the heads. A batch may
mix tasks: it is split by its ``task`` column and every part runs with its task's adapters. The exported per-task
adapter (:mod:`.export`) is the same modules holding the generated values, hence the same outputs.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from transformers.modeling_outputs import SequenceClassifierOutput

from ftplugins.errors import FtpluginsError, UnsupportedModelError

from .contrastive import cosine_pair_loss
from .hypernetwork import WEIGHTS, AdapterHypernetwork, AdapterSite

#: Names of the final classification Linear in transformers' *ForSequenceClassification models.
HEAD_NAMES = ("classifier", "score")
ADAPTER = "default"


def head_name_of(model: Any) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Linear):
            return name
    raise UnsupportedModelError(
        f"hyper_adapter: {type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r}) has no "
        f"Linear classification head named {' or '.join(HEAD_NAMES)}; use an AutoModelForSequenceClassification "
        "whose head is one Linear (BERT / MiniLM, DeBERTa, Llama-style 'score')."
    )


def adapter_config(options: Any, modules_to_save: list[str]) -> Any:
    """The bottleneck adapters' config; ``modules_to_save=[]`` while training (the task heads stand in for the
    model's head), ``[head]`` in an export."""
    from ftplugins.methods.bottleneck.config import BottleneckConfig

    return BottleneckConfig(preset="llm_adapters_series", target_modules=list(options.hyper_adapter_target_modules),
                            series_side="output", bottleneck_size=options.hyper_adapter_size,
                            activation=options.hyper_adapter_activation, adapter_bias=True,
                            modules_to_save=modules_to_save)


def adapter_sites(base: nn.Module) -> list[AdapterSite]:
    """Every injected adapter, with its layer id (the module path's number) and position id (the path's pattern)."""
    found = []
    for name, module in base.named_modules():
        adapters = getattr(module, "bottleneck_adapter", None)
        if isinstance(adapters, nn.ModuleDict) and ADAPTER in adapters:
            numbers = re.findall(r"\.(\d+)\.", f".{name}.")
            if not numbers:
                raise UnsupportedModelError(f"hyper_adapter: adapted module {name!r} has no layer number in its "
                                            "path; target Linear modules inside the model's numbered layers.")
            found.append((name, int(numbers[0]), re.sub(r"\.\d+\.", ".*.", f".{name}.", count=1).strip(".")))
    if not found:
        raise UnsupportedModelError("hyper_adapter: no module matched --hyper_adapter_target_modules; name Linear "
                                    "modules of the model's layers (BERT: attention.output.dense output.dense).")
    layers = sorted({layer for _, layer, _ in found})
    positions = sorted({pattern for _, _, pattern in found})
    sites = []
    for name, layer, pattern in found:
        adapter = base.get_submodule(name).bottleneck_adapter[ADAPTER]
        sites.append(AdapterSite(name, layers.index(layer), positions.index(pattern), adapter.in_features,
                                 adapter.down.shape[0], adapter.out_features))
    return sites


class HyperAdapterModel(nn.Module):
    def __init__(self, model: Any, tasks: list[tuple[str, int]], options: Any):
        super().__init__()
        from peft import get_peft_model

        self.head_name = head_name_of(model)
        self.tasks, self.options, self.config = list(tasks), options, model.config
        self.adapted = get_peft_model(model, adapter_config(options, modules_to_save=[]))
        self.adapted.requires_grad_(False)  # base frozen; the adapters' own tensors are placeholders
        self.sites = adapter_sites(self.adapted.get_base_model())
        sources = "mlp" if options.hyper_adapter_parametrization == "hyperformer" else "product"
        self.hypernetwork = AdapterHypernetwork(len(tasks), self.sites, options.hyper_adapter_embedding_dim,
                                                options.hyper_adapter_hidden_dim, sources=sources)
        head = getattr(model, self.head_name)
        std = getattr(model.config, "initializer_range", 0.02)
        self.heads = nn.ModuleList()
        for _, num_labels in tasks:
            task_head = nn.Linear(head.in_features, num_labels, bias=head.bias is not None)
            nn.init.normal_(task_head.weight, std=std)
            if task_head.bias is not None:
                nn.init.zeros_(task_head.bias)
            self.heads.append(task_head)

    def generated(self, task: int) -> dict[str, dict[str, torch.Tensor]]:
        """Task ``task``'s adapters: module name -> {down, down_bias, up, up_bias}."""
        return self.hypernetwork(task)

    def _substitutions(self, task: int) -> dict[str, torch.Tensor]:
        params = {f"base_model.model.{module}.bottleneck_adapter.{ADAPTER}.{name}": tensors[name]
                  for module, tensors in self.generated(task).items() for name in WEIGHTS}
        # Views, not the Parameters themselves: functional_call cannot swap a Parameter in for another module's.
        head = self.heads[task]
        params[f"base_model.model.{self.head_name}.weight"] = head.weight.view_as(head.weight)
        if head.bias is not None:
            params[f"base_model.model.{self.head_name}.bias"] = head.bias.view_as(head.bias)
        return params

    def task_logits(self, task: int, **inputs: Any) -> torch.Tensor:
        """Logits of a batch of ``task`` rows, with that task's generated adapters and head."""
        return functional_call(self.adapted, self._substitutions(task), args=(), kwargs=inputs).logits

    def task_features(self, task: int, **inputs: Any) -> torch.Tensor:
        """The features ``task``'s head reads (BERT: the pooler output), with the task's adapters."""
        captured = []
        head = self.adapted.get_base_model().get_submodule(self.head_name)
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            self.task_logits(task, **inputs)
        finally:
            handle.remove()
        return captured[0]

    def _by_task(self, task: torch.Tensor | None, inputs: dict[str, Any]):
        if task is None:
            raise FtpluginsError("hyper_adapter: the batch has no 'task' column; give every row its task (an index "
                                 "into --hyper_adapter_tasks or a task NAME).")
        for t in task.unique().tolist():
            if not 0 <= t < len(self.tasks):
                raise FtpluginsError(f"hyper_adapter: task id {t} in the batch; --hyper_adapter_tasks has "
                                     f"{len(self.tasks)} tasks (ids 0..{len(self.tasks) - 1}).")
            rows = (task == t).nonzero().squeeze(1)
            yield t, rows, {k: v[rows] for k, v in inputs.items() if v is not None}

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, task=None,
                num_items_in_batch=None):
        """Logits padded to the largest task's label count with -inf (argmax and softmax stay right); the loss is
        the cross-entropy of every row under its own task's head, summed and divided by the row count (or by
        ``num_items_in_batch`` under gradient accumulation)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        width = max(count for _, count in self.tasks)
        logits = torch.full((input_ids.shape[0], width), float("-inf"), device=input_ids.device)
        total = None
        for t, rows, part in self._by_task(task, inputs):
            task_logits = self.task_logits(t, **part).float()
            padded = F.pad(task_logits, (0, width - task_logits.shape[1]), value=float("-inf"))
            logits = logits.index_copy(0, rows, padded)
            if labels is not None:
                term = F.cross_entropy(task_logits, labels[rows], reduction="sum")
                total = term if total is None else total + term
        loss = None if total is None else total / (num_items_in_batch or input_ids.shape[0])
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def contrastive_loss(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, task=None,
                         **_: Any) -> torch.Tensor:
        """SetFit's stage on the generated adapters: the mean over every same-task pair of the batch of
        (cos(u, v) − [same label])²."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        features, pair_labels = [], []
        for t, rows, part in self._by_task(task, inputs):
            features.append(self.task_features(t, **part))
            pair_labels.append(labels[rows])
        return cosine_pair_loss(features, pair_labels)
