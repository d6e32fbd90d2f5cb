"""LiST self-training on the real MiniLM encoder: a pet teacher, then sessions on the unlabelled rows."""

from __future__ import annotations

import pytest
import torch

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.list_selftrain import plugin
from ftplugins.methods.pet import plugin as pet

from test_pet import NEGATIVE, POSITIVE, VERBALIZER, masked_lm  # noqa: F401  (shared fixtures and data)
from test_pet import tokenizer  # noqa: F401


def mixed(unlabelled=4):
    from datasets import Dataset

    labels = ["pos"] * 6 + ["neg"] * 6 + [None] * unlabelled
    texts = POSITIVE[:6] + NEGATIVE[:6] + (POSITIVE[6:] + NEGATIVE[6:])[:unlabelled]
    return Dataset.from_dict({"text": texts, "label": labels})


def build(tmp_path, tokenizer, data=None, plugins=None, **options):
    from transformers import Trainer, TrainingArguments

    options = {"list_selftrain_sessions": 2, "list_selftrain_steps": 4, "list_selftrain_batch_size": 4,
               "list_selftrain_labelled_steps": 1, "list_selftrain_lr": 1e-3, "list_selftrain_warmup": 0.5,
               "pet_verbalizer": VERBALIZER, **options}
    plugins = plugins or [plugin, pet]
    options = {k: v for k, v in options.items() if k.startswith(tuple(f"{p.name}_" for p in plugins))}
    cls = ftplugins.compose(Trainer, plugins, **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2,
                             per_device_train_batch_size=4, learning_rate=1e-3, save_strategy="no",
                             disable_tqdm=True, seed=0)
    return cls(model=masked_lm(), args=args, train_dataset=data if data is not None else mixed(),
               processing_class=tokenizer)


def test_sessions_train_the_adapter_and_head_only_with_valid_weights(tmp_path, tokenizer):
    trainer = build(tmp_path, tokenizer)
    assert len(trainer.train_dataset) == 12  # the teacher sees the labelled rows only
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    state = trainer.ftplugins_run.state["list_selftrain"]
    sessions = state["sessions"]
    assert len(sessions) == 2
    for record in sessions:
        weights = record["weights"]
        assert len(weights) == 4 and all(torch.allclose(w, torch.full((4,), 0.25)) for w in weights[:2])
        for w in weights[2:]:  # meta re-weighting after the warm-up: ≥ 0, summing to 1 unless all zero
            assert bool((w >= 0).all()) and (float(w.sum()) == pytest.approx(1.0) or float(w.sum()) == 0.0)
        # The student adapter restarts from its initial values each session.
        init = state["adapter_init"]
        assert init and all(torch.equal(record["adapter_at_start"][n], init[n]) for n in init)
    meta = [w for record in sessions for w in record["weights"][2:]]
    assert any(not torch.allclose(w, torch.full((4,), 0.25)) for w in meta)  # re-weighting did weigh
    # The teacher of session 2 is the model session 1 produced: its soft labels changed.
    assert not torch.allclose(sessions[0]["teacher"], sessions[1]["teacher"])
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all("lora_" in n or n.startswith("pet_head.") for n in changed)  # PLM unchanged


def test_the_teacher_is_frozen_within_a_session(tmp_path, tokenizer, monkeypatch):
    """Every student step of a session distils from the soft labels computed once at the session's start."""
    from ftplugins.methods.list_selftrain import sessions as S

    used = []
    real = S.weighted_distillation
    monkeypatch.setattr(S, "weighted_distillation", lambda s, t, w: used.append(t.clone()) or real(s, t, w))
    trainer = build(tmp_path, tokenizer, list_selftrain_sessions=1)
    trainer.train()
    teacher = trainer.ftplugins_run.state["list_selftrain"]["sessions"][0]["teacher"]
    assert len(used) == 4
    assert all(any(torch.equal(row, t) for t in teacher) for batch in used for row in batch)


@pytest.mark.parametrize("data,plugins,message", [
    ("labelled-only", None, "no unlabelled rows"),
    ("unlabelled-only", None, "every row of the training dataset is unlabelled"),
    (None, ["pet", "list_selftrain"], "list_selftrain first"),
    (None, ["list_selftrain"], "select both"),
])
def test_bad_set_ups_are_refused(data, plugins, message, tmp_path, tokenizer):
    from datasets import Dataset

    table = {"labelled-only": mixed(unlabelled=0),
             "unlabelled-only": Dataset.from_dict({"text": ["a", "b"], "label": [None, ""]})}
    objects = {"pet": pet, "list_selftrain": plugin}
    with pytest.raises(FtpluginsError, match=message):
        build(tmp_path, tokenizer, data=table.get(data), plugins=[objects[p] for p in plugins] if plugins else None)


@pytest.mark.parametrize("key,value", [("list_selftrain_sessions", 0), ("list_selftrain_warmup", 1.5),
                                       ("list_selftrain_lr", -1.0)])
def test_bad_options_name_the_option(key, value):
    from transformers import Trainer

    with pytest.raises(OptionError, match=key):
        ftplugins.compose(Trainer, [plugin, pet], **{key: value})
