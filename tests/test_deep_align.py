"""Deep safety alignment: token-wise constrained SFT and safety-recovery augmentation."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.methods.deep_align import trainer as deep_trainer_module
from ftplugins.methods.deep_align.augment import PREFIX_COLUMN, harmful_tokens, safety_recovery_dataset
from ftplugins.methods.deep_align.objective import (
    WEIGHT_FLOOR,
    beta_schedule,
    constrained_objective,
    response_positions,
    token_weights,
)
from ftplugins.objectives.ref_logprobs import REF_COLUMN
from ftplugins.objectives.sft_tokens import TextFormat, tokenize_prompt_completion
from ftplugins.objectives.token_logprobs import chunked_token_logprobs, token_logprobs
from ftplugins.testing import arithmetic_dataset, arithmetic_example, tiny_llama, tiny_tokenizer

DEFAULTS = dict(beta=0.1, first_token_factor=5.0, bias_factor=20.0, bias_length=5)


def sft_args(tmp_path, **overrides):
    from trl import SFTConfig

    values = dict(max_length=64, per_device_train_batch_size=4, per_device_eval_batch_size=3)
    values.update(overrides)
    return cpu_args(SFTConfig, tmp_path, **values)


def build(tmp_path, plugins=("deep_align",), model=None, data=None, args=None, **kwargs):
    from trl import SFTTrainer

    options = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith(("deep_align_", "masked_thought_"))}
    cls = ftplugins.compose(SFTTrainer, list(plugins), **options) if plugins else SFTTrainer
    return cls(model=model or tiny_llama(), args=args or sft_args(tmp_path),
               train_dataset=data or arithmetic_dataset(12), processing_class=tiny_tokenizer(), **kwargs)


def batch_of(trainer, n=4):
    keep = ("input_ids", "labels", REF_COLUMN)
    features = [{k: v for k, v in trainer.train_dataset[i].items() if k in keep} for i in range(n)]
    return trainer.data_collator(features)


def loss_and_grads(trainer, batch):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def perturb(*models, seed=1, scale=0.05):
    for model in models:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


def assert_grads_close(a, b, rtol=1e-5, atol=1e-7):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


# The objective, as tensor functions


def test_beta_schedule_defaults_and_no_bias():
    positions = torch.arange(9)
    assert beta_schedule(positions, **DEFAULTS).tolist() == pytest.approx([0.1, 0.5, 2, 2, 2, 2, 0.1, 0.1, 0.1])
    assert beta_schedule(positions, **{**DEFAULTS, "bias_length": 0}).tolist() == pytest.approx([0.1] * 9)
    assert beta_schedule(positions, **{**DEFAULTS, "bias_length": 1}).tolist() == pytest.approx([0.1, 0.5] + [0.1] * 7)


def test_positions_count_from_the_first_response_token_whatever_the_padding():
    mask = torch.tensor([
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],  # right-padded layout, prompt of 3
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 0],  # left padding + prompt: response starts at 6
        [0, 1, 1, 0, 0, 1, 1, 0, 0, 0],  # two assistant turns: the count goes on
    ], dtype=torch.bool)
    assert response_positions(mask).tolist() == [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
        [0, 0, 0, 0, 0, 0, 1, 2, 3, 0],
        [0, 1, 2, 0, 0, 3, 4, 0, 0, 0],
    ]
    starts = torch.zeros_like(mask)
    starts[2, 4] = True  # padding-free row: a second sequence starts at 4
    assert response_positions(mask, starts)[2].tolist() == [0, 1, 2, 0, 0, 1, 2, 0, 0, 0]
    assert response_positions(mask, starts)[0].tolist() == response_positions(mask)[0].tolist()


def test_weights_are_one_at_the_reference_bounded_and_decreasing():
    delta = torch.linspace(-200, 200, 4001)
    for beta in (0.1, 0.5, 2.0):
        w = token_weights(delta, torch.zeros_like(delta), torch.full_like(delta, beta))
        assert w.min() >= WEIGHT_FLOOR and w.max() <= 2.0
        assert (w[1:] <= w[:-1]).all() and w[0] > 1.99 and w[-1] == WEIGHT_FLOOR
    at_ref = token_weights(torch.randn(50), torch.zeros(50), torch.zeros(50))
    assert (at_ref == 1).all()  # beta = 0
    log_probs = torch.randn(50, requires_grad=True)
    w = token_weights(log_probs, log_probs.detach(), torch.full((50,), 0.5))
    assert (w == 1).all() and not w.requires_grad


def test_training_gradient_is_the_gradient_of_the_constrained_objective():
    g = torch.Generator().manual_seed(0)
    log_probs = (-3 * torch.rand(64, generator=g)).requires_grad_()
    ref = -3 * torch.rand(64, generator=g)
    mask = torch.rand(64, generator=g) > 0.2
    betas = beta_schedule(response_positions(mask[None])[0], **DEFAULTS)
    exact = torch.autograd.grad(constrained_objective(log_probs, ref, betas, mask).sum(), log_probs)[0]
    weights = token_weights(log_probs, ref, betas)
    trained = torch.autograd.grad((-(weights * log_probs) * mask).sum(), log_probs)[0]
    assert (weights > WEIGHT_FLOOR).all()
    torch.testing.assert_close(trained, exact)
    # far above the reference the exact gradient vanishes; the clamp keeps a floor, as the reference code does
    far = torch.tensor([60.0], requires_grad=True)
    assert torch.autograd.grad(-(token_weights(far, torch.zeros(1), torch.tensor([2.0])) * far).sum(), far)[0] == -1e-3


# Through the trainer: the invariants


def test_at_the_reference_weights_are_one_and_gradients_equal_sft(tmp_path):
    plain = build(tmp_path / "sft", plugins=())
    deep = build(tmp_path / "deep")
    deep_trainer_module.prepare_reference(deep.ftplugins_run, deep)
    batch = batch_of(deep)
    assert REF_COLUMN in batch
    sft_loss, sft_grads = loss_and_grads(plain, {k: v for k, v in batch.items() if k != REF_COLUMN})
    loss, grads = loss_and_grads(deep, batch)
    torch.testing.assert_close(loss, sft_loss, rtol=1e-6, atol=0)
    assert_grads_close(grads, sft_grads, rtol=1e-5, atol=1e-8)
    assert deep._metrics["train"]["deep_align/weight"][-1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("ref", ["on_the_fly", "precompute"])
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_under_bf16_mixed_precision_the_first_step_is_exactly_at_the_reference(tmp_path, ref, adapter):
    """TRL trains in bf16 by default: the reference must be computed under the training forward's autocast, or
    rounding alone makes Delta != 0 (and the weights != 1) before any update."""
    from peft import LoraConfig

    extra = {"peft_config": LoraConfig(r=4, target_modules=["q_proj", "v_proj"])} if adapter else {}
    deep = build(tmp_path, deep_align_ref=ref, args=sft_args(tmp_path, max_steps=2, bf16=True), **extra)
    assert deep.accelerator.mixed_precision == "bf16"
    deep.train()
    logged = [(h["deep_align/weight"], h["deep_align/delta"]) for h in deep.state.log_history if "deep_align/weight" in h]
    assert logged[0] == (1.0, 0.0)  # exactly: same forward, same precision, same weights
    assert logged[1] != (1.0, 0.0)  # after one update the policy has moved away from the reference


def test_beta_to_zero_gives_sft_gradients_away_from_the_reference(tmp_path):
    plain = build(tmp_path / "sft", plugins=())
    deep = build(tmp_path / "deep")
    deep_trainer_module.prepare_reference(deep.ftplugins_run, deep)  # reference = the initial weights
    perturb(plain.model, deep.model)  # now Delta != 0
    batch = batch_of(deep)
    _, sft_grads = loss_and_grads(plain, {k: v for k, v in batch.items() if k != REF_COLUMN})
    _, default_grads = loss_and_grads(deep, batch)
    run = deep.ftplugins_run
    run.options["deep_align"] = dataclasses.replace(run.options["deep_align"], deep_align_beta=1e-8)
    _, tiny_beta_grads = loss_and_grads(deep, batch)
    assert_grads_close(tiny_beta_grads, sft_grads, rtol=1e-5, atol=1e-8)
    differs = [n for n in sft_grads if not torch.allclose(default_grads[n], sft_grads[n], rtol=1e-3, atol=1e-6)]
    assert len(differs) > len(sft_grads) // 2  # the default beta does change the update


def test_loss_is_the_weighted_nll_with_beta_counted_per_row_from_its_first_response_token(tmp_path):
    """An independent per-row oracle, as the reference computes it: beta list by index over each row's tokens."""
    deep = build(tmp_path, data=arithmetic_dataset(12, max_value=99))  # prompts of different lengths
    deep_trainer_module.prepare_reference(deep.ftplugins_run, deep)
    perturb(deep.model, scale=0.2)
    batch = batch_of(deep)
    labels = batch["labels"]
    assert len({int((row != -100).nonzero()[0]) for row in labels}) > 1  # rows' responses start at different offsets
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    deep.model.train()
    log_probs, mask = token_logprobs(deep.model, inputs, labels)
    ref = batch[REF_COLUMN][:, 1:]
    terms = []
    for r in range(labels.shape[0]):
        policy, reference = log_probs[r][mask[r]], ref[r][mask[r]]
        betas = torch.tensor([0.5] + [2.0] * 4 + [0.1] * (len(policy) - 5))[: len(policy)]
        weight = (2 * (1 - torch.sigmoid(betas * (policy.detach() - reference)))).clamp(min=1e-3)
        terms.append(-(weight * policy))
    expected = torch.cat(terms).mean()
    expected_grads = {n: g.clone() for n, g in zip(
        [n for n, _ in deep.model.named_parameters()],
        torch.autograd.grad(expected, list(deep.model.parameters()), allow_unused=True), strict=True) if g is not None}
    loss, grads = loss_and_grads(deep, batch)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=0)
    assert_grads_close(grads, expected_grads, rtol=1e-4, atol=1e-7)
    assert deep._metrics["train"]["deep_align/weight"][-1] != pytest.approx(1.0, abs=1e-3)  # weights at work


def test_precomputed_reference_equals_on_the_fly_with_a_frozen_copy(tmp_path):
    pre = build(tmp_path / "pre")
    deep_trainer_module.prepare_reference(pre.ftplugins_run, pre)
    fly = build(tmp_path / "fly", deep_align_ref="on_the_fly")
    deep_trainer_module.prepare_reference(fly.ftplugins_run, fly)
    state = fly.ftplugins_run.state["deep_align"]
    assert state.ref_model is not None and state.ref_model is not fly.model
    assert REF_COLUMN not in fly.train_dataset.column_names
    batch = batch_of(pre)
    stored = batch.pop(REF_COLUMN)[:, 1:]
    perturb(fly.model)  # training moves the model; the copy stays at the initial weights
    computed = deep_trainer_module.reference_log_probs(fly.ftplugins_run, fly, fly.model, dict(batch), None)
    torch.testing.assert_close(computed, stored, rtol=1e-5, atol=1e-5)
    mask = batch["labels"][:, 1:] != -100
    assert (stored[mask] < 0).all() and (stored[~mask] == 0).all()


@pytest.mark.parametrize("ref", ["on_the_fly", "precompute"])
def test_with_lora_the_reference_is_the_adapter_disabled_model_and_no_copy_is_made(tmp_path, monkeypatch, ref):
    from peft import LoraConfig

    def no_copy(model):
        raise AssertionError("a PEFT run must not copy the model")

    monkeypatch.setattr(deep_trainer_module, "frozen_copy", no_copy)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # not the identity
    deep = build(tmp_path, peft_config=lora, deep_align_ref=ref, args=sft_args(tmp_path, max_steps=2))
    deep_trainer_module.prepare_reference(deep.ftplugins_run, deep)
    batch = batch_of(deep)
    stored = batch.pop(REF_COLUMN, None)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base, _ = chunked_token_logprobs(tiny_llama(), inputs, batch["labels"])  # the model without the adapter
    with torch.no_grad():
        with_adapter, _ = token_logprobs(deep.model, inputs, batch["labels"])
    assert not torch.allclose(with_adapter.float(), base, atol=1e-4)
    reference = stored[:, 1:] if ref == "precompute" else deep_trainer_module.reference_log_probs(
        deep.ftplugins_run, deep, deep.model, dict(batch), None)
    torch.testing.assert_close(reference, base, rtol=1e-5, atol=1e-5)
    deep.train()
    assert deep.ftplugins_run.state["deep_align"].ref_model is None
    weights = [h["deep_align/weight"] for h in deep.state.log_history if "deep_align/weight" in h]
    assert len(weights) == 2 and weights[0] != 1.0  # the adapter starts away from the reference


def test_padding_free_batches_restart_the_schedule_per_sequence(tmp_path):
    padded = build(tmp_path / "padded")
    packed = build(tmp_path / "free", args=sft_args(tmp_path / "free", padding_free=True, max_length=None))
    for trainer in (padded, packed):
        deep_trainer_module.prepare_reference(trainer.ftplugins_run, trainer)
    perturb(padded.model, packed.model, scale=0.2)
    a, b = batch_of(padded), batch_of(packed)
    assert b["input_ids"].shape[0] == 1 and "position_ids" in b
    loss_a, grads_a = loss_and_grads(padded, a)
    loss_b, grads_b = loss_and_grads(packed, b)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)
    assert_grads_close(grads_b, grads_a, rtol=1e-4, atol=1e-7)


def test_objective_sft_is_plain_sft(tmp_path):
    plain = build(tmp_path / "sft", plugins=())
    deep = build(tmp_path / "deep", deep_align_objective="sft")
    deep_trainer_module.prepare_reference(deep.ftplugins_run, deep)
    assert REF_COLUMN not in deep.train_dataset.column_names
    batch = batch_of(plain)
    loss_a, grads_a = loss_and_grads(plain, batch)
    loss_b, grads_b = loss_and_grads(deep, batch)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


@pytest.mark.parametrize("disable", [True, False])
def test_dropout_is_turned_off_in_the_trained_model(tmp_path, disable):
    deep = build(tmp_path, model=tiny_llama(attention_dropout=0.3), deep_align_disable_dropout=disable)
    rates = {m.attention_dropout for m in deep.model.modules() if hasattr(m, "attention_dropout")}
    assert rates == ({0.0} if disable else {0.3})


def test_evaluation_reports_the_plain_nll(tmp_path):
    plain = build(tmp_path / "sft", plugins=(), eval_dataset=arithmetic_dataset(6, seed=1))
    deep = build(tmp_path / "deep", eval_dataset=arithmetic_dataset(6, seed=1))
    deep_trainer_module.prepare_reference(deep.ftplugins_run, deep)
    perturb(plain.model, deep.model)
    assert deep.evaluate()["eval_loss"] == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-6)


# Safety-recovery augmentation


HARMFUL = "Sure, here is the answer. The quick brown fox jumps over the lazy dog."
REFUSAL = "I cannot help with that."


def safety_dataset(n_safety=24, n_utility=8, conversational=False):
    from datasets import Dataset

    rng = random.Random(0)
    rows = []
    for i in range(n_safety):
        prompt = f"How do I do bad thing {i}?"
        rows.append({"prompt": [{"role": "user", "content": prompt}] if conversational else prompt,
                     "harmful_response": HARMFUL, "refusal": REFUSAL, "completion": None})
    for _ in range(n_utility):
        ex = arithmetic_example(rng)
        rows.append({"prompt": [{"role": "user", "content": ex["prompt"]}] if conversational else ex["prompt"],
                     "harmful_response": None, "refusal": None,
                     "completion": [{"role": "assistant", "content": ex["completion"]}] if conversational
                     else ex["completion"]})
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def fmt():
    tokenizer = tiny_tokenizer()
    return TextFormat(tokenizer=tokenizer, eos_token=tokenizer.eos_token)


@pytest.mark.parametrize("conversational", [False, True])
def test_augmented_rows_have_a_harmful_prefix_and_loss_on_the_refusal_only(fmt, conversational):
    data = safety_dataset(conversational=conversational)
    out = safety_recovery_dataset(data, fmt, prob=1.0, max_prefix=100, seed=0)
    tokenizer = fmt.tokenizer
    ks = out[PREFIX_COLUMN]
    assert ks[24:] == [-1] * 8 and all(k >= 1 for k in ks[:24])
    for i in range(24):
        row = data[i]
        refusal = {**row, "completion": [{"role": "assistant", "content": REFUSAL}] if conversational else REFUSAL}
        ids, start = tokenize_prompt_completion(fmt, refusal)
        h = harmful_tokens(fmt, row, HARMFUL)
        k = ks[i]
        assert 1 <= k <= min(100, len(h))
        assert out["input_ids"][i] == ids[:start] + h[:k] + ids[start:]
        assert out["labels"][i] == [-100] * (start + k) + ids[start:]
        assert tokenizer.decode([t for t in out["labels"][i] if t != -100]).strip() == REFUSAL + "</s>"
        assert HARMFUL.startswith(tokenizer.decode(h[:k]).strip())
    for i in range(24, 32):  # utility rows: exactly SFT's rows
        ids, start = tokenize_prompt_completion(fmt, data[i])
        assert out["input_ids"][i] == ids and out["labels"][i] == [-100] * start + ids[start:]
    if conversational:
        text = tokenizer.decode(out["input_ids"][0])
        assert text.startswith("Q: How do I do bad thing 0?\nA:") and text.endswith(REFUSAL + "</s>")
        assert text.count("A:") == 1  # prefix and refusal share one assistant turn


def test_augmentation_draws_are_seeded_and_follow_the_probability(fmt):
    data = safety_dataset(n_safety=80, n_utility=0)
    out = safety_recovery_dataset(data, fmt, seed=0)
    ks = out[PREFIX_COLUMN]
    assert 25 <= sum(k > 0 for k in ks) <= 55  # p = 0.5
    assert len(set(ks)) > 5  # k uniform over 1..|h|
    assert safety_recovery_dataset(data, fmt, seed=0).to_dict() == out.to_dict()
    assert safety_recovery_dataset(data, fmt, seed=1)[PREFIX_COLUMN] != ks
    assert safety_recovery_dataset(data, fmt, seed=0, split="eval")[PREFIX_COLUMN] != ks
    plain = safety_recovery_dataset(data, fmt, prob=0.0)
    assert set(plain[PREFIX_COLUMN]) == {0}
    short = safety_recovery_dataset(data, fmt, prob=1.0, max_prefix=3)
    assert set(short[PREFIX_COLUMN]) == {1, 2, 3}


def test_augmentation_refuses_datasets_without_its_columns(fmt):
    with pytest.raises(DatasetColumnsError, match="harmful_response"):
        safety_recovery_dataset(arithmetic_dataset(4), fmt)
    from datasets import Dataset

    with pytest.raises(DatasetColumnsError, match="row 0"):
        safety_recovery_dataset(Dataset.from_list([{"prompt": "x", "harmful_response": None, "refusal": None}]), fmt)


# Training runs


def test_augmented_constrained_training_run_through_compose(tmp_path):
    deep = build(tmp_path, data=safety_dataset(), deep_align_augment=True,
                 args=sft_args(tmp_path, max_steps=2, learning_rate=1e-2))
    assert set(deep.train_dataset[PREFIX_COLUMN]) >= {-1, 0} and max(deep.train_dataset[PREFIX_COLUMN]) > 0
    deep.train()
    assert REF_COLUMN in deep.train_dataset.column_names
    history = [h for h in deep.state.log_history if "loss" in h]
    assert len(history) == 2 and history[0]["deep_align/weight"] == pytest.approx(1.0, abs=1e-6)
    assert history[1]["deep_align/weight"] != pytest.approx(1.0, abs=1e-6)  # the model moved away


def test_composes_with_masked_thought(tmp_path):
    deep = build(tmp_path, plugins=("deep_align", "masked_thought"), masked_thought_ratio=0.5,
                 masked_thought_warmup=0.0, args=sft_args(tmp_path, max_steps=2))
    seen = []
    inner = deep.compute_loss

    def recording(model, inputs, *args, **kwargs):
        seen.append((REF_COLUMN in inputs, inputs["input_ids"].clone(), inputs["labels"].clone()))
        return inner(model, inputs, *args, **kwargs)

    deep.compute_loss = recording
    deep.train()
    assert len(seen) == 2 and all(has_ref for has_ref, _, _ in seen)
    # masked_thought corrupted response inputs; the labels (and the stored reference) are the clean tokens
    assert all(not torch.equal(ids, torch.where(labels != -100, labels, ids)) for _, ids, labels in seen)
    assert all("deep_align/weight" in h for h in deep.state.log_history if "loss" in h)


# User errors


@pytest.mark.parametrize(
    "options",
    [{"deep_align_beta": -0.1}, {"deep_align_ref": "cached"}, {"deep_align_objective": "dpo"},
     {"deep_align_bias_length": -1}, {"deep_align_augment_prob": 1.5}, {"deep_align_augment_max_prefix": 0},
     {"deep_align_betta": 0.1}],
)
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["deep_align"], **options)


@pytest.mark.parametrize(("overrides", "message"), [({"label_smoothing_factor": 0.1}, "label_smoothing"),
                                                    ({"loss_type": "dft"}, "loss_type")])
def test_other_sft_losses_are_refused(tmp_path, overrides, message):
    with pytest.raises(FtpluginsError, match=message):
        build(tmp_path, args=sft_args(tmp_path, **overrides))


def test_a_batch_without_its_precomputed_reference_is_an_error(tmp_path):
    deep = build(tmp_path)
    batch = deep.data_collator([{k: deep.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(2)])
    deep.model.train()
    with pytest.raises(FtpluginsError, match="precomputed reference"):
        deep.compute_loss(deep.model, batch)


def test_plugin_module_does_not_import_torch():
    code = "import sys, ftplugins.methods.deep_align as m; assert 'torch' not in sys.modules; print(m.plugin.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "deep_align"
