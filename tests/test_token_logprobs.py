"""Shared objective machinery: chunked token log-probs and reference log-probs (ftplugins.objectives)."""

from __future__ import annotations

import pytest
import torch

from ftplugins.errors import FtpluginsError, UnsupportedModelError
from ftplugins.objectives import ref_logprobs, token_logprobs
from ftplugins.objectives.ref_logprobs import (
    collate_reference,
    frozen_copy,
    precompute_reference,
    reference_model,
    reference_token_logprobs,
    split_rows,
)
from ftplugins.objectives.token_logprobs import chunked_token_logprobs, has_fused_lm_head
from ftplugins.testing import tiny_llama


def batch(seed=0, rows=3, length=12, vocab=300):
    """A right-padded batch with a prompt of a different length in each row (labels -100 there)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (rows, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    for r in range(rows):
        labels[r, : 2 + r] = -100  # prompt
        pad = r  # row r has r padding positions
        if pad:
            input_ids[r, -pad:] = 0
            attention_mask[r, -pad:] = 0
            labels[r, -pad:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


def naive_logprobs(model, inputs, labels):
    """Full logits, log_softmax, gather: what the chunked path must reproduce."""
    logits = model(**inputs).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    lp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(mask, lp, torch.zeros_like(lp)), mask


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_chunked_values_and_gradients_equal_full_logits(chunk_size):
    model = tiny_llama()
    inputs, labels = batch()
    expected, mask = naive_logprobs(model, inputs, labels)
    (-expected.sum()).backward()
    want = grads(model)
    model.zero_grad()
    got, got_mask = chunked_token_logprobs(model, inputs, labels, chunk_size=chunk_size)
    assert torch.equal(got_mask, mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[~mask] == 0).all()
    (-got.sum()).backward()
    have = grads(model)
    assert have.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunks_bound_the_logits_in_forward_and_backward(monkeypatch):
    """Every LM-head projection, including the recomputation in backward, covers at most chunk_size rows."""
    seen = []
    original = token_logprobs.label_logprobs

    def recording(hidden, *args):
        seen.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(token_logprobs, "label_logprobs", recording)
    model = tiny_llama()
    inputs, labels = batch(rows=4, length=16)
    scored = int((labels[:, 1:] != -100).sum())
    log_probs, _ = chunked_token_logprobs(model, inputs, labels, chunk_size=4)
    forward_calls = len(seen)
    (-log_probs.sum()).backward()
    assert forward_calls == -(-scored // 4) and max(seen) <= 4
    assert len(seen) == 2 * forward_calls  # each chunk recomputed once in backward (checkpointed)


def test_fused_head_path_matches_the_fallback():
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_llama()
    inputs, labels = batch()
    expected, mask = chunked_token_logprobs(model, inputs, labels)
    assert not has_fused_lm_head(model)
    add_fused_lm_head(model)
    assert has_fused_lm_head(model)
    got, got_mask = token_logprobs.token_logprobs(model, inputs, labels)
    assert torch.equal(got_mask, mask)
    torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)


def test_all_masked_batch_gives_a_differentiable_zero():
    model = tiny_llama()
    inputs, labels = batch()
    labels[:] = -100
    log_probs, mask = chunked_token_logprobs(model, inputs, labels)
    assert not mask.any() and (log_probs == 0).all()
    log_probs.sum().backward()  # no error: still connected to the graph


def test_model_without_a_backbone_is_unsupported():
    class HeadOnly(torch.nn.Module):
        def get_output_embeddings(self):
            return torch.nn.Linear(4, 4)

    inputs, labels = batch()
    with pytest.raises(UnsupportedModelError, match="HeadOnly"):
        chunked_token_logprobs(HeadOnly(), inputs, labels)


# Reference log-probs


def test_a_model_without_adapter_has_no_implicit_reference():
    inputs, labels = batch()
    with pytest.raises(FtpluginsError, match="no reference model"):
        reference_token_logprobs(tiny_llama(), inputs, labels)


def test_reference_of_a_peft_model_is_the_adapter_disabled_model_and_modes_are_restored():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    expected, _ = chunked_token_logprobs(base, *batch())
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    with_adapter, _ = chunked_token_logprobs(model, *batch())
    assert not torch.allclose(with_adapter, expected, atol=1e-4)  # the adapter matters
    reference = reference_token_logprobs(model, *batch())
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)
    assert not reference.requires_grad
    assert all(m.training for m in model.modules())
    after, _ = chunked_token_logprobs(model, *batch())
    torch.testing.assert_close(after, with_adapter)  # adapter enabled again


def test_frozen_copy_is_independent_and_keeps_its_own_fused_head():
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_llama()
    add_fused_lm_head(model)
    inputs, labels = batch()
    before, _ = token_logprobs.token_logprobs(model, inputs, labels)
    clone = frozen_copy(model)
    assert has_fused_lm_head(clone) and not any(p.requires_grad for p in clone.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    reference = reference_token_logprobs(model, inputs, labels, ref_model=clone)
    torch.testing.assert_close(reference, before.detach().float())
    # The copy's plain forward runs the copy, not the original it was cloned from.
    torch.testing.assert_close(clone(**inputs).logits, frozen_copy(clone)(**inputs).logits)
    assert not torch.allclose(clone(**inputs).logits, model(**inputs).logits)


def test_reference_model_context_puts_the_reference_in_eval_mode():
    model = tiny_llama()
    model.train()
    with reference_model(model, ref_model=model) as reference:
        assert reference is model and not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("padding_free", [False, True])
def test_precomputed_rows_equal_on_the_fly_values(padding_free):
    from datasets import Dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = tiny_llama()
    rows = []
    inputs, labels = batch(rows=5, length=10)
    for r in range(5):
        n = int(inputs["attention_mask"][r].sum())
        rows.append({"input_ids": inputs["input_ids"][r, :n].tolist(), "labels": labels[r, :n].tolist()})
    dataset = Dataset.from_list(rows)
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
    values = precompute_reference(model, dataset, collate, batch_size=2, ref_model=model)
    assert [len(v) for v in values] == [len(r["input_ids"]) for r in rows]
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    expected = reference_token_logprobs(model, {"input_ids": padded["input_ids"],
                                                "attention_mask": padded["attention_mask"]},
                                        padded["labels"], ref_model=model)
    stored = collate_reference(values, padded["input_ids"])
    torch.testing.assert_close(stored[:, 1:], expected, rtol=1e-5, atol=1e-5)
    assert (stored[:, 0] == 0).all() and (stored[padded["labels"] == -100] == 0).all()
    with_column = ref_logprobs.add_reference_column(dataset, values)
    assert with_column.features[ref_logprobs.REF_COLUMN].feature.dtype == "float32"


def test_split_and_collate_round_trip_for_padding_free_batches():
    flat = torch.arange(1.0, 9.0)[None]  # one padding-free row of 3 + 2 + 4 tokens: 8 next-token values
    rows = split_rows(flat, [3, 2, 4])
    assert rows == [[0.0, 1.0, 2.0], [0.0, 4.0], [0.0, 6.0, 7.0, 8.0]]
    out = collate_reference(rows, torch.zeros(1, 10, dtype=torch.long))
    assert out[0].tolist() == [0.0, 1.0, 2.0, 0.0, 4.0, 0.0, 6.0, 7.0, 8.0, 0.0]
    with pytest.raises(ValueError):
        split_rows(torch.zeros(2, 4), [3, 2, 4])
