"""PET with adapters on the real MiniLM encoder: label scores, softmax over labels, frozen PLM, pattern ensemble."""

from __future__ import annotations

import os

import pytest
import torch

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.methods.pet import plugin
from ftplugins.methods.pet.options import PetOptions

POSITIVE = ["a wonderful film", "great acting and a great story", "i loved every minute", "truly excellent work",
            "a delightful surprise", "brilliant and moving", "the best film this year", "warm funny and smart"]
NEGATIVE = ["a boring mess", "terrible acting and a dull story", "i hated every minute", "truly awful work",
            "a painful waste of time", "bland and lifeless", "the worst film this year", "cold dull and stupid"]
VERBALIZER = ["pos:great", "neg:terrible"]



@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ftplugins.testing import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def masked_lm():
    from transformers import AutoModelForMaskedLM

    from ftplugins.testing import minilm_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    return AutoModelForMaskedLM.from_pretrained(str(minilm_path()))


def reviews():
    from datasets import Dataset

    return Dataset.from_dict({"text": POSITIVE + NEGATIVE, "label": ["pos"] * 8 + ["neg"] * 8})


def test_label_scores_sum_the_verbaliser_logits_over_the_masks(tokenizer):
    from ftplugins.methods.pet.head import PetHead, mask_hidden
    from ftplugins.methods.pet.verbalizer import build_verbalizer

    model = masked_lm().eval()
    verbalizer = build_verbalizer(["pos:very good", "neg:not good"], tokenizer)  # m = 2, a token shared by both
    head = PetHead(model, verbalizer)
    batch = tokenizer(["a fine film. it was [MASK] [MASK].", "so bad. it was [MASK] [MASK]."], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        scores = head(mask_hidden(model, dict(batch), tokenizer.mask_token_id, 2))
        full = model(**batch).logits  # the masked LM's own logits over the whole vocabulary
    at = batch["input_ids"] == tokenizer.mask_token_id
    for row in range(2):
        positions = at[row].nonzero().flatten()
        for label, ids in enumerate(verbalizer.token_ids):
            expected = sum(full[row, pos, tok] for pos, tok in zip(positions, ids))
            assert scores[row, label] == pytest.approx(float(expected), rel=1e-5, abs=1e-4)


def plugin_ids(tokenizer):
    """Row order of the head: the verbaliser's token ids, sorted (``torch.unique``)."""
    return sorted(tokenizer.convert_tokens_to_ids([v.split(":")[1] for v in VERBALIZER]))


def trained(tmp_path, tokenizer, **options):
    from transformers import Trainer, TrainingArguments

    model = masked_lm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cls = ftplugins.compose(Trainer, [plugin], pet_verbalizer=VERBALIZER,
                            pet_patterns=["{text} It was {mask}.", "Review: {text} Verdict: {mask}"], **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=4,
                             per_device_train_batch_size=8, learning_rate=1e-3, save_strategy="no",
                             disable_tqdm=True, logging_steps=1, seed=0)
    trainer = cls(model=model, args=args, train_dataset=reviews(), processing_class=tokenizer)
    trainer.train()
    return trainer, before


def test_only_the_adapter_and_head_train_and_the_plm_is_unchanged(tmp_path, tokenizer):
    trainer, before = trained(tmp_path, tokenizer)
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("pet_head.") for n in trainable)
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()
            if "lora_" not in n and not n.startswith("pet_head.")}
    assert set(base) == set(before)
    assert all(torch.equal(base[n], before[n]) for n in before)  # PLM weights unchanged
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(bool(p.abs().sum() > 0) for p in lora_b)  # LoRA B starts at zero: the adapter trained
    transform = model.pet_head.transform.dense.weight
    original = before["cls.predictions.transform.dense.weight"]
    assert not torch.equal(transform, original)  # the head's copy trained, the model's own head did not
    rows = before["bert.embeddings.word_embeddings.weight"][plugin_ids(tokenizer)]
    assert not torch.equal(model.pet_head.weight.detach(), rows)  # verbaliser rows trained, the embeddings did not
    assert os.path.isfile(tmp_path / "pet_head.safetensors") and os.path.isfile(tmp_path / "pet.json")


def test_the_loss_is_cross_entropy_of_a_softmax_over_the_labels_only(tmp_path, tokenizer):
    trainer, _ = trained(tmp_path, tokenizer, pet_adapter="none")
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    scores = outputs["logits"]
    assert scores.shape == (8, 2)  # one score per label, not per vocabulary token
    expected = -(scores.log_softmax(-1).gather(1, batch["labels"][:, None])).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if not n.startswith("pet_head."))


def test_predict_ensembles_the_patterns_by_mean_probability(tmp_path, tokenizer):
    from ftplugins.methods.pet.predict import predict_proba

    trainer, _ = trained(tmp_path, tokenizer, pet_adapter="none")
    verbalizer = trainer.ftplugins_run.state["pet_verbalizer"]
    patterns = ["{text} It was {mask}.", "Review: {text} Verdict: {mask}"]
    both = predict_proba(trainer.model, tokenizer, POSITIVE[:2], patterns, verbalizer)
    each = [predict_proba(trainer.model, tokenizer, POSITIVE[:2], [p], verbalizer) for p in patterns]
    assert torch.allclose(both, (each[0] + each[1]) / 2)
    assert torch.allclose(both.sum(-1), torch.ones(2))


def test_dataset_rows_are_one_per_pattern_with_class_indices(tokenizer):
    from ftplugins.methods.pet.cloze import encode
    from ftplugins.methods.pet.verbalizer import build_verbalizer

    opts = PetOptions(pet_verbalizer=VERBALIZER, pet_patterns=["{text} It was {mask}.", "{mask}: {text}"])
    rows = encode(reviews(), opts, tokenizer, build_verbalizer(VERBALIZER, tokenizer))
    assert len(rows) == 32 and rows["pet_pattern"][:2] == [0, 1] and rows["labels"][:2] == [0, 0]
    assert all(ids.count(tokenizer.mask_token_id) == 1 for ids in rows["input_ids"])


@pytest.mark.parametrize("verbalizer,message", [
    (["pos:unbelievably", "neg:bad"], "splits 'unbelievably' into 5 tokens"),
    (["pos:very good", "neg:bad"], "same number of tokens"),
    (["pos:good", "neg:good"], "same tokens"),
])
def test_verbalisers_the_tokenizer_cannot_honour_are_refused(verbalizer, message, tokenizer):
    from ftplugins.methods.pet.verbalizer import build_verbalizer

    with pytest.raises(FtpluginsError, match=message):
        build_verbalizer(verbalizer, tokenizer)


@pytest.mark.parametrize("data,message", [
    ({"text": ["a"], "label": ["meh"]}, "label='meh', which is not a verbaliser label"),
    ({"sentence": ["a"], "label": ["pos"]}, "no column 'text'"),
    ({"text": [], "label": []}, "empty"),
])
def test_bad_datasets_are_refused(data, message, tokenizer):
    from datasets import Dataset

    from ftplugins.methods.pet.cloze import encode
    from ftplugins.methods.pet.verbalizer import build_verbalizer

    opts = PetOptions(pet_verbalizer=VERBALIZER)
    with pytest.raises(FtpluginsError, match=message):
        encode(Dataset.from_dict(data), opts, tokenizer, build_verbalizer(VERBALIZER, tokenizer))


@pytest.mark.parametrize("key,value", [("pet_adapter", "prefix"), ("pet_patterns", ["{text} no mask"]),
                                       ("pet_verbalizer", ["pos:great"]), ("pet_verbalizer", ["pos great", "neg:x"]),
                                       ("pet_lora_r", 0)])
def test_bad_options_name_the_option(key, value):
    from transformers import Trainer

    with pytest.raises(OptionError, match=key):
        ftplugins.compose(Trainer, [plugin], **{key: value})


def test_trl_trainers_and_a_missing_verbaliser_are_refused_before_the_model_loads(tmp_path):
    from transformers import Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(FtpluginsError, match="pet trains a masked LM with transformers.Trainer, not SFTTrainer"):
        ftplugins.compose(SFTTrainer, [plugin], pet_verbalizer=VERBALIZER)(
            model=str(tmp_path / "never-loaded"), args=args, train_dataset=reviews())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(FtpluginsError, match="pet needs pet_verbalizer"):
        ftplugins.compose(Trainer, [plugin])(model=str(tmp_path / "never-loaded"), args=args, train_dataset=reviews())


def test_a_model_without_a_bert_style_mlm_head_is_refused_by_type(tmp_path):
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import tiny_llama, tiny_tokenizer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM.*'llama'.*no BERT-style MLM head"):
        ftplugins.compose(Trainer, [plugin], pet_verbalizer=VERBALIZER)(
            model=tiny_llama(), args=args, train_dataset=reviews(), processing_class=tiny_tokenizer())
