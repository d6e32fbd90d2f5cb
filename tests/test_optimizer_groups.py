"""The shared optimizer builder for create_optimizer hooks: the trainer's class, decay split and a method's groups."""

from __future__ import annotations

import torch
from torch import nn

from ftplugins.optimizer_groups import grouped_optimizer


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.adapter = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def args(tmp_path, **kwargs):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3,
                             weight_decay=0.1, **kwargs)


def test_groups_follow_the_settings_and_the_trainers_decay_split(tmp_path):
    model = Tiny()
    optimizer = grouped_optimizer(model, args(tmp_path), lambda name, _: {"lr": 5e-3} if name.startswith("adapter.")
                                  else {})
    assert type(optimizer) is torch.optim.AdamW
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(named["frozen.weight"]) not in by_param and len(by_param) == 6
    assert by_param[id(named["body.weight"])]["weight_decay"] == 0.1  # decayed, base rate
    assert by_param[id(named["body.bias"])]["weight_decay"] == 0.0 and by_param[id(named["norm.weight"])][
        "weight_decay"] == 0.0  # the trainer never decays biases and norms
    assert by_param[id(named["adapter.weight"])]["lr"] == 5e-3 and by_param[id(named["body.weight"])]["lr"] == 1e-3
    assert len(optimizer.param_groups) == 4  # (base, adapter) x (decayed, not)


def test_a_mixin_is_placed_before_the_trainers_class_and_gets_its_arguments(tmp_path):
    class Marked:
        def __init__(self, params, *, mark, **kwargs):
            super().__init__(params, **kwargs)
            self.mark = mark

    optimizer = grouped_optimizer(Tiny(), args(tmp_path, optim="sgd"), lambda *_: {}, mixin=Marked, mark="m")
    assert isinstance(optimizer, torch.optim.SGD) and isinstance(optimizer, Marked) and optimizer.mark == "m"
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups)
