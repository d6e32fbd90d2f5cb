"""LEVI on the real MiniLM encoder: frozen backbone, small model + heads train, prediction = the ensemble."""

from __future__ import annotations

import pytest
import torch

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.levi import plugin

from test_mean_teacher import tokenizer  # noqa: F401  (a shared fixture)


def reviews(tokenizer):
    from datasets import Dataset

    data = Dataset.from_dict({"text": ["a wonderful film", "a boring mess", "truly excellent", "truly awful"] * 2,
                              "label": [1, 0, 1, 0] * 2})
    return data.map(lambda row: tokenizer(row["text"], truncation=True, max_length=16), remove_columns=["text"])


def build(tmp_path, tokenizer, **options):
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import minilm_classifier

    torch.manual_seed(0)
    cls = ftplugins.compose(Trainer, [plugin], **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2,
                             per_device_train_batch_size=4, learning_rate=1e-3, save_strategy="no",
                             disable_tqdm=True, seed=0)
    return cls(model=minilm_classifier(num_labels=2), args=args, train_dataset=reviews(tokenizer),
               processing_class=tokenizer)


def test_the_backbone_stays_unchanged_and_the_small_model_and_heads_train(tmp_path, tokenizer):
    trainer = build(tmp_path, tokenizer)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    backbone = [n for n in before if n.startswith("pretrained.")]
    assert backbone and all(torch.equal(before[n], after[n]) for n in backbone)
    trained = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any(n.startswith("small.") for n in trained) and all(
        any(n.startswith(f"heads.{i}.") for n in trained) for i in range(3))
    assert trained <= {n for n in before if n.startswith(("small.", "heads."))}


@pytest.mark.parametrize("ensemble", ["mean_probs", "mean_logits"])
def test_the_prediction_is_the_ensemble_of_the_heads(ensemble, tmp_path, tokenizer):
    trainer = build(tmp_path, tokenizer, levi_ensemble=ensemble, levi_layers=[0, 3, -1])
    model = trainer.model.eval()
    batch = tokenizer(["a wonderful film", "truly awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        per_head = model.head_logits(**batch)
        output = model(**batch, labels=torch.tensor([1, 0]))
    assert len(per_head) == 3
    if ensemble == "mean_probs":
        expected = torch.stack([h.softmax(-1) for h in per_head]).mean(0).log()
    else:
        expected = torch.stack(per_head).mean(0)
    assert torch.allclose(output.logits, expected, atol=1e-6)
    ce = torch.nn.functional.cross_entropy
    assert float(output.loss) == pytest.approx(float(sum(ce(h, torch.tensor([1, 0])) for h in per_head) / 3))
    with torch.no_grad():  # under accumulation the Trainer passes the item count: the same loss for one batch
        counted = model(**batch, labels=torch.tensor([1, 0]), num_items_in_batch=2)
    assert float(counted.loss) == pytest.approx(float(output.loss), rel=1e-6)


def test_layers_outside_the_model_are_refused_naming_its_depth(tmp_path, tokenizer):
    with pytest.raises(FtpluginsError, match=r"levi_layers \[9\].*7 hidden states \(embeddings \+ 6 layers\)"):
        build(tmp_path, tokenizer, levi_layers=[-1, 9])


@pytest.mark.parametrize("key,value", [("levi_layers", []), ("levi_ensemble", "vote"), ("levi_small_dim", 0)])
def test_bad_options_name_the_option(key, value):
    from transformers import Trainer

    with pytest.raises(OptionError, match=key):
        ftplugins.compose(Trainer, [plugin], **{key: value})


def test_trl_trainers_are_refused_before_the_model_loads(tmp_path):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(FtpluginsError, match="levi trains a classifier with transformers.Trainer, not SFTTrainer"):
        ftplugins.compose(SFTTrainer, [plugin])(model=str(tmp_path / "never-loaded"), args=args, train_dataset=[])
