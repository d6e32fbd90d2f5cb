"""Masked Thought (MFT): response inputs are masked during training only; labels, prompt and pad never."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.masked_thought.collator import batch_generator
from ftplugins.methods.masked_thought.masking import mask_response_tokens, ratio_at
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer


def sft_args(tmp_path, **overrides):
    from trl import SFTConfig

    values = dict(max_steps=4, per_device_train_batch_size=4)
    values.update(overrides)
    return cpu_args(SFTConfig, tmp_path, **values)


def masked_trainer(tmp_path, tokenizer=None, model=None, args=None, record=False, n=32, **options):
    """A composed SFTTrainer; ``record`` keeps (step, micro-batch, model.training, inputs) of each loss."""
    from trl import SFTTrainer

    base = ftplugins.compose(SFTTrainer, ["masked_thought"], **options)
    cls = type("Recording", (base,), {"compute_loss": recording_compute_loss}) if record else base
    trainer = cls(
        model=model or tiny_llama(),
        args=args or sft_args(tmp_path),
        train_dataset=arithmetic_dataset(n),
        eval_dataset=arithmetic_dataset(8, seed=1),
        processing_class=tokenizer or tiny_tokenizer(),
    )
    trainer.seen = []
    return trainer


def recording_compute_loss(self, model, inputs, *args, **kwargs):
    step = self.state.global_step
    micro = sum(1 for s, _, training, _ in self.seen if s == step and training)
    self.seen.append((step, micro, model.training, {k: v.clone() for k, v in inputs.items()}))
    return super(type(self), self).compute_loss(model, inputs, *args, **kwargs)


def features(trainer, start=0, n=4):
    return [{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(start, start + n)]


def collate_for_training(trainer, feats):
    """(clean batch, batch as the collator builds it inside ``train()``)."""
    collator = trainer.data_collator
    clean = collator.collator(feats)
    with collator.masking(True):
        return clean, collator(feats)


def unmasked(inputs):
    """The clean input ids of a TRL batch: its labels are the unshifted response tokens."""
    return torch.where(inputs["labels"] != -100, inputs["labels"], inputs["input_ids"])


def final_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# 1. ratio 0 is plain SFT, bit for bit


def test_ratio_zero_is_plain_sft(tmp_path):
    from trl import SFTTrainer

    plain = SFTTrainer(model=tiny_llama(), args=sft_args(tmp_path / "plain"), train_dataset=arithmetic_dataset(32),
                       processing_class=tiny_tokenizer())
    masked = masked_trainer(tmp_path / "masked", masked_thought_ratio=0.0, masked_thought_warmup=0.0)
    feats = features(plain)
    clean, batch = collate_for_training(masked, feats)
    expected = plain.data_collator(feats)
    assert batch.keys() == expected.keys()
    for key in expected:
        assert torch.equal(batch[key], expected[key])

    plain.train()
    masked.train()
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, masked)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    a, b = final_weights(plain), final_weights(masked)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# 2, 3, 5, 8. what the collator changes, and how often


def test_only_response_inputs_change_and_labels_stay(tmp_path):
    trainer = masked_trainer(tmp_path, masked_thought_ratio=0.5, masked_thought_warmup=0.0)
    clean, batch = collate_for_training(trainer, features(trainer, n=8))
    response = clean["labels"] != -100
    changed = batch["input_ids"] != clean["input_ids"]
    assert changed.any()
    assert not (changed & ~response).any()  # prompt and padding untouched
    assert torch.equal(batch["labels"], clean["labels"])
    assert torch.equal(batch["attention_mask"], clean["attention_mask"])
    assert torch.equal(unmasked(batch), clean["input_ids"])


def test_mask_rate_matches_ratio_over_response_tokens(tmp_path):
    trainer = masked_trainer(tmp_path, masked_thought_ratio=0.3, masked_thought_warmup=0.0,
                             masked_thought_variant="mask_token")
    mask_id = trainer.processing_class.mask_token_id
    collator = trainer.data_collator
    masked = candidates = 0
    with collator.masking(True):
        for start in range(0, 32, 16):
            for _ in range(10):  # ten micro-batches of the same rows: ten independent masks
                batch = collator(features(trainer, start, 16))
                masked += int((batch["input_ids"] == mask_id).sum())
                candidates += int((batch["labels"] != -100).sum())
    assert candidates > 3000
    assert abs(masked / candidates - 0.3) < 0.03


def test_mask_response_tokens_rate_and_bounds():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 300, (64, 100), generator=generator)
    labels = input_ids.clone()
    labels[:, :40] = -100
    new, masked = mask_response_tokens(input_ids, labels, 0.3, generator, vocab_size=320)
    assert not masked[:, :40].any() and torch.equal(new[:, :40], input_ids[:, :40])
    assert abs(masked[:, 40:].float().mean().item() - 0.3) < 0.03
    assert torch.equal(new[~masked], input_ids[~masked])
    assert new.min() >= 0 and new.max() < 320
    with pytest.raises(ValueError):
        mask_response_tokens(input_ids, labels, 0.3, generator)


def test_random_variant_draws_vocabulary_ids(tmp_path):
    trainer = masked_trainer(tmp_path, masked_thought_ratio=1.0, masked_thought_warmup=0.0)
    clean, batch = collate_for_training(trainer, features(trainer, n=8))
    response = clean["labels"] != -100
    ids = batch["input_ids"][response]
    assert ids.min() >= 0 and ids.max() < len(trainer.processing_class)
    assert (ids != clean["input_ids"][response]).float().mean() > 0.9  # (a draw may equal the original id)


def test_mask_token_variant_puts_the_mask_id_on_every_chosen_position(tmp_path):
    tokenizer = tiny_tokenizer()
    trainer = masked_trainer(tmp_path, tokenizer=tokenizer, masked_thought_ratio=1.0, masked_thought_warmup=0.0,
                             masked_thought_variant="mask_token")
    assert len(tokenizer) == trainer.model.get_input_embeddings().num_embeddings  # existing <mask>: no new row
    clean, batch = collate_for_training(trainer, features(trainer, n=8))
    response = clean["labels"] != -100
    assert (batch["input_ids"][response] == tokenizer.mask_token_id).all()
    assert torch.equal(batch["input_ids"][~response], clean["input_ids"][~response])


def tokenizer_without_mask():
    """The tiny tokenizer with its <mask> entry renamed, so that adding <mask> needs a new id."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ftplugins.testing import _tokenizer_json

    backend = Tokenizer.from_str(_tokenizer_json().replace('"<mask>"', '"<sep>"'))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_mask_token_is_added_with_mean_embeddings(tmp_path):
    tokenizer = tokenizer_without_mask()
    known = len(tokenizer)
    assert tokenizer.mask_token is None and "<mask>" not in tokenizer.get_vocab()
    model = tiny_llama(vocab_size=known)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    trainer = masked_trainer(tmp_path, tokenizer=tokenizer, model=model, masked_thought_variant="mask_token",
                             masked_thought_ratio=1.0, masked_thought_warmup=0.0)
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == known
    new_in = trainer.model.get_input_embeddings().weight
    new_out = trainer.model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == known + 1
    assert torch.equal(new_in[:known], old_in) and torch.equal(new_out[:known], old_out)
    assert torch.allclose(new_in[known], old_in.mean(0)) and torch.allclose(new_out[known], old_out.mean(0))
    _, batch = collate_for_training(trainer, features(trainer))
    assert (batch["input_ids"][batch["labels"] != -100] == known).all()
    trainer.train()  # the new row trains like any other


def test_drop_attention_zeroes_exactly_the_masked_positions(tmp_path):
    trainer = masked_trainer(tmp_path, masked_thought_ratio=0.5, masked_thought_warmup=0.0,
                             masked_thought_variant="mask_token", masked_thought_drop_attention=True)
    clean, batch = collate_for_training(trainer, features(trainer, n=8))
    masked = batch["input_ids"] == trainer.processing_class.mask_token_id
    assert masked.any() and (clean["attention_mask"][masked] == 1).all()
    assert torch.equal(batch["attention_mask"], clean["attention_mask"].masked_fill(masked, 0))


# 4. schedule


def test_ratio_ramps_linearly_then_stays():
    assert [ratio_at(s, 30, 0.4, 2 / 3) for s in (0, 5, 10, 15)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [ratio_at(s, 30, 0.4, 2 / 3) for s in (20, 25, 29)] == pytest.approx([0.4] * 3)
    assert [ratio_at(s, 30, 0.4, 0.0) for s in (0, 1, 29)] == [0.4] * 3
    assert ratio_at(0, 0, 0.4, 2 / 3) == 0.4  # no step count known: no ramp


# 6, 7, 10. training runs: keys, schedule, evaluation, determinism, resume


def test_training_batches_follow_step_schedule_and_keys(tmp_path):
    """Every training micro-batch is masked with p(step) and the generator of (seed, step, micro-batch, rank),
    across gradient accumulation, accelerate's one-batch-ahead prefetch and an epoch with a short last step."""
    args = sft_args(tmp_path, gradient_accumulation_steps=2, max_steps=5)
    trainer = masked_trainer(tmp_path, args=args, record=True, n=20, masked_thought_ratio=0.4,
                             masked_thought_warmup=0.5)  # 5 micro-batches per epoch: steps of 2, 2, 1
    trainer.train()
    seen = [(s, m, x) for s, m, training, x in trainer.seen if training]
    assert [(s, m) for s, m, _ in seen] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (3, 0), (3, 1), (4, 0), (4, 1)]
    vocab = len(trainer.processing_class)
    for step, micro, inputs in seen:
        clean = unmasked(inputs)
        ratio = ratio_at(step, 5, 0.4, 0.5)
        expected, _ = mask_response_tokens(clean, inputs["labels"], ratio, batch_generator(0, step, micro, 0),
                                           vocab_size=vocab)
        assert torch.equal(inputs["input_ids"], expected), (step, micro)
        assert (step == 0) == torch.equal(inputs["input_ids"], clean)  # p = 0 only at step 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))


def test_evaluation_sees_clean_inputs_and_training_stays_masked(tmp_path):
    args = sft_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4)
    trainer = masked_trainer(tmp_path, args=args, record=True, masked_thought_ratio=0.5, masked_thought_warmup=0.0)
    trainer.train()
    trainer.evaluate()
    train = [x for _, _, training, x in trainer.seen if training]
    evaluation = [x for _, _, training, x in trainer.seen if not training]
    assert len(train) == 2 and len(evaluation) == 3 * 2
    assert all(torch.equal(x["input_ids"], unmasked(x)) for x in evaluation)
    # also the batches fetched right after an evaluation, while the model is still in eval mode
    assert all(not torch.equal(x["input_ids"], unmasked(x)) for x in train)


def test_masks_depend_only_on_seed_step_and_micro_batch_so_resume_redraws_them(tmp_path):
    first = masked_trainer(tmp_path / "a", record=True, masked_thought_warmup=0.0,
                           args=sft_args(tmp_path / "a", save_strategy="steps", save_steps=2))
    first.train()
    resumed = masked_trainer(tmp_path / "b", record=True, masked_thought_warmup=0.0, args=sft_args(tmp_path / "b"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))

    def training_inputs(trainer):
        return {(s, m): x["input_ids"] for s, m, training, x in trainer.seen if training}

    a, b = training_inputs(first), training_inputs(resumed)
    assert a.keys() == {(0, 0), (1, 0), (2, 0), (3, 0)} and b.keys() == {(2, 0), (3, 0)}
    assert all(torch.equal(a[k], b[k]) for k in b)

    def draw(*key):
        return torch.rand(8, generator=batch_generator(*key))

    assert torch.equal(draw(0, 2, 0, 0), draw(0, 2, 0, 0))
    for other in [(1, 2, 0, 0), (0, 3, 0, 0), (0, 2, 1, 0), (0, 2, 0, 1)]:
        assert not torch.equal(draw(0, 2, 0, 0), draw(*other))


# 9. user errors


@pytest.mark.parametrize(
    "options",
    [
        {"masked_thought_ratio": 1.5},
        {"masked_thought_ratio": -0.1},
        {"masked_thought_variant": "bogus"},
        {"masked_thought_warmup": 2.0},
        {"masked_thought_ratoi": 0.2},
    ],
)
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["masked_thought"], **options)


def test_refuses_non_sft_trainers_and_worker_processes(tmp_path):
    from trl import DPOConfig, DPOTrainer, SFTTrainer

    dpo = ftplugins.compose(DPOTrainer, ["masked_thought"])
    with pytest.raises(FtpluginsError, match="SFTTrainer"):
        dpo(model=tiny_llama(), args=cpu_args(DPOConfig, tmp_path), processing_class=tiny_tokenizer())
    sft = ftplugins.compose(SFTTrainer, ["masked_thought"])
    with pytest.raises(FtpluginsError, match="dataloader_num_workers=0"):
        sft(model=tiny_llama(), args=sft_args(tmp_path, dataloader_num_workers=2), processing_class=tiny_tokenizer())
    dropping = ftplugins.compose(SFTTrainer, ["masked_thought"], masked_thought_drop_attention=True)
    with pytest.raises(FtpluginsError, match="padding_free"):
        dropping(model=tiny_llama(), args=sft_args(tmp_path, padding_free=True), processing_class=tiny_tokenizer(),
            train_dataset=arithmetic_dataset(4))


def test_plugin_module_does_not_import_torch():
    code = "import sys, ftplugins.methods.masked_thought as m; assert 'torch' not in sys.modules; print(m.plugin.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "masked_thought"
