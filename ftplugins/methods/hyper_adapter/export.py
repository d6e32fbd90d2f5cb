"""Export one task of the hypernetwork as a plain PEFT adapter: the ``bottleneck`` adapters holding that task's
generated weights, plus the task's head as ``modules_to_save``. It loads with ``ftplugins.load_adapter`` (or
``PeftModel.from_pretrained``) onto the base classifier built with the task's ``num_labels`` and gives the
hypernetwork path's outputs; no hypernetwork is needed at inference."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch

from .model import ADAPTER, HyperAdapterModel, adapter_config

#: Written beside the adapter: which task it is and how many labels its head has.
TASK_FILE = "hyper_adapter_task.json"


def export_task_adapter(model: HyperAdapterModel, task: int, folder: str) -> str:
    from peft import get_peft_model

    from ftplugins.atomic import staged_dir

    name, num_labels = model.tasks[task]
    plain = copy.deepcopy(model.adapted).unload()  # the frozen base classifier, without adapters
    plain.set_submodule(model.head_name, copy.deepcopy(model.heads[task]))
    plain.config.num_labels = num_labels
    exported = get_peft_model(plain, adapter_config(model.options, modules_to_save=[model.head_name]))
    with torch.no_grad():
        for module, tensors in model.generated(task).items():
            adapter = exported.get_base_model().get_submodule(module).bottleneck_adapter[ADAPTER]
            for key, value in tensors.items():
                getattr(adapter, key).copy_(value)
    with staged_dir(folder, replace=True) as tmp:
        exported.save_pretrained(tmp)
        with open(os.path.join(tmp, TASK_FILE), "w") as handle:
            json.dump({"task": name, "task_index": task, "num_labels": num_labels}, handle, indent=1)
    return folder


def export_all(model: HyperAdapterModel, root: str) -> list[str]:
    return [export_task_adapter(model, t, os.path.join(root, name)) for t, (name, _) in enumerate(model.tasks)]


def load_task_model(folder: str, base: Any = None) -> Any:
    """The exported task's classifier: ``base`` (a path; default the base recorded in the adapter) loaded with the
    task's ``num_labels``, the adapter on it."""
    from transformers import AutoModelForSequenceClassification

    from ftplugins.peft_types import load_adapter

    with open(os.path.join(folder, TASK_FILE)) as handle:
        num_labels = json.load(handle)["num_labels"]
    if base is None:
        with open(os.path.join(folder, "adapter_config.json")) as handle:
            base = json.load(handle)["base_model_name_or_path"]
    return load_adapter(AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels), folder)
