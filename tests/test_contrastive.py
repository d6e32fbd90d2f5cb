"""Contrastive generative exploration: the processor's invariants (identical models -> the plausibility mask alone;
the contrast's sign; the α cutoff; the chosen token always in the head), the cached base equals a full recompute,
base + adapter equals the explicit base, different tokenizers refused, and `ftplugins generate --contrastive`."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from ftplugins.errors import FtpluginsError
from ftplugins.testing import tiny_llama, tiny_tokenizer
from ftplugins.tools.contrastive import (
    AdapterDisabled,
    ContrastiveLogitsProcessor,
    check_same_tokenizer,
    contrastive_generate,
    contrastive_generate_ids,
    plausibility_head,
)


class FixedLogits(torch.nn.Module):
    """A 'base model' whose next-token logits are fixed, so the contrast is known in closed form."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kwargs):
        out = self.logits.expand(input_ids.shape[0], input_ids.shape[1], -1)
        return type("Out", (), {"logits": out, "past_key_values": None})()


def ids(tokenizer, text="the cat sat on"):
    return torch.tensor([tokenizer(text)["input_ids"]])


def peaky_llama(seed=0):
    """A tiny Llama with a sharper next-token distribution than random init gives (so the head is a real subset)."""
    model = tiny_llama(seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


def test_identical_models_reduce_to_the_plausibility_mask():
    tokenizer, model = tiny_tokenizer(), peaky_llama()
    input_ids = ids(tokenizer)
    scores = model(input_ids).logits[:, -1]
    out = ContrastiveLogitsProcessor(copy.deepcopy(model), alpha=0.1)(input_ids, scores)
    head = plausibility_head(torch.log_softmax(scores, -1), 0.1)
    assert head.sum() >= 1 and (~head).sum() >= 1
    assert torch.all(torch.isneginf(out[~head]))
    torch.testing.assert_close(out[head], torch.zeros_like(out[head]), atol=1e-5, rtol=0)


def test_the_contrast_favours_tokens_the_base_finds_unlikely_and_gamma_weighs_it():
    vocab = 6
    ft_logits = torch.tensor([[2.0, 2.0, 1.9, -1.0, -5.0, -5.0]])
    base_logits = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # the base loves token 0
    input_ids = torch.zeros(1, 3, dtype=torch.long)
    log_ft, log_pt = torch.log_softmax(ft_logits, -1), torch.log_softmax(base_logits, -1)
    for gamma in (1.0, 0.5, 0.0):
        out = ContrastiveLogitsProcessor(FixedLogits(base_logits), alpha=0.1, gamma=gamma)(input_ids, ft_logits)
        head = plausibility_head(log_ft, 0.1)
        assert head[0].tolist() == [True, True, True, False, False, False]
        torch.testing.assert_close(out[head], (log_ft - gamma * log_pt)[head])
        assert out.shape == (1, vocab)
    out = ContrastiveLogitsProcessor(FixedLogits(base_logits), alpha=0.1)(input_ids, ft_logits)
    assert out[0, 1] > out[0, 0]  # equally likely under FT, less likely under the base: scored higher
    assert out.argmax().item() == 1


def test_the_cutoff_alpha_zero_keeps_every_token_and_alpha_one_only_the_top():
    ft_logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    base = FixedLogits(torch.tensor([0.0, 5.0, -5.0, -9.0]))  # the lowest-FT token is the base's least likely
    input_ids = torch.zeros(1, 2, dtype=torch.long)
    everything = ContrastiveLogitsProcessor(base, alpha=0.0)(input_ids, ft_logits)
    assert torch.isfinite(everything).all() and everything.argmax().item() == 3  # unbounded contrast picks junk
    top = ContrastiveLogitsProcessor(base, alpha=1.0)(input_ids, ft_logits)
    assert torch.isfinite(top).sum() == 1 and top.argmax().item() == 1
    threshold = ContrastiveLogitsProcessor(base, alpha=math.exp(-2.5))(input_ids, ft_logits)
    assert torch.isfinite(threshold)[0].tolist() == [False, True, True, False]  # p >= e^-2.5 max p
    with pytest.raises(FtpluginsError, match="alpha=1.5"):
        ContrastiveLogitsProcessor(base, alpha=1.5)


def test_every_generated_token_is_in_the_fine_tuned_models_head_and_the_cache_changes_nothing():
    tokenizer, ft, pt = tiny_tokenizer(), peaky_llama(seed=0), peaky_llama(seed=1)
    prompts = ["the cat", "a much longer prompt about dogs"]  # left padding exercised
    cached = contrastive_generate_ids(ft, tokenizer, prompts, pt, alpha=0.3, max_new_tokens=8)
    uncached = contrastive_generate_ids(ft, tokenizer, prompts, pt, alpha=0.3, max_new_tokens=8, use_cache=False)
    plain = contrastive_generate(ft, tokenizer, prompts, pt, alpha=1.0, max_new_tokens=8)  # head = argmax only
    assert cached == uncached
    greedy = [tokenizer.decode(ft.generate(ids(tokenizer, p), max_new_tokens=8, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id)[0, ids(tokenizer, p).shape[1]:],
                               skip_special_tokens=True) for p in prompts]
    assert plain == greedy  # α = 1 leaves only FT's own argmax: plain greedy decoding
    checked = 0
    for prompt, new in zip(prompts, cached):
        sequence = tokenizer(prompt)["input_ids"]
        for token in new:
            if token == tokenizer.pad_token_id:  # after an EOS
                break
            log_ft = torch.log_softmax(ft(torch.tensor([sequence])).logits[0, -1], -1)
            assert plausibility_head(log_ft, 0.3)[token], (prompt, new)
            sequence.append(token)
            checked += 1
    assert checked >= 8


def test_base_plus_adapter_uses_the_adapter_disabled_model_as_the_base():
    from peft import LoraConfig, get_peft_model

    tokenizer, base = tiny_tokenizer(), tiny_llama()
    reference_base = copy.deepcopy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    input_ids = ids(tokenizer)
    torch.testing.assert_close(AdapterDisabled(peft_model)(input_ids=input_ids).logits,
                               reference_base(input_ids=input_ids).logits)
    assert not torch.allclose(peft_model(input_ids=input_ids).logits, reference_base(input_ids=input_ids).logits)
    scores = peft_model(input_ids=input_ids).logits[:, -1]
    with_adapter_off = ContrastiveLogitsProcessor(AdapterDisabled(peft_model))(input_ids, scores)
    with_copy = ContrastiveLogitsProcessor(reference_base)(input_ids, scores)
    torch.testing.assert_close(with_adapter_off, with_copy)
    assert contrastive_generate(peft_model, tokenizer, ["the cat"], max_new_tokens=5) == contrastive_generate(
        peft_model, tokenizer, ["the cat"], reference_base, max_new_tokens=5)
    with pytest.raises(FtpluginsError, match="without disable_adapter"):
        contrastive_generate(tiny_llama(), tokenizer, ["the cat"])


def test_different_tokenizers_and_vocabularies_are_refused():
    tokenizer, other = tiny_tokenizer(), tiny_tokenizer()
    check_same_tokenizer(tokenizer, other)
    other.add_tokens(["<brand-new>"])
    with pytest.raises(FtpluginsError, match="tokenizers differ"):
        check_same_tokenizer(tokenizer, other)
    with pytest.raises(FtpluginsError, match="tokenizers differ"):
        contrastive_generate(tiny_llama(), tokenizer, ["x"], tiny_llama(), base_tokenizer=other)
    with pytest.raises(FtpluginsError, match="one vocabulary"):
        contrastive_generate(tiny_llama(), tokenizer, ["x"], tiny_llama(vocab_size=len(tokenizer) + 8))


def test_generate_contrastive_from_the_command_line(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from ftplugins.methods.aligned_prefix.cli import add_subparser
    from ftplugins.testing import save_tiny_llama
    import argparse

    ft_dir, base_dir = save_tiny_llama(str(tmp_path / "ft"), seed=0), save_tiny_llama(str(tmp_path / "pt"), seed=1)
    peft_model = get_peft_model(tiny_llama(seed=1), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers())

    def run(*argv):
        args = parser.parse_args(["generate", *argv, "--prompt", "the cat", "--max_new_tokens", "4", "--json"])
        args.func(args)
        return capsys.readouterr().out

    pair = run("--contrastive", "--model", ft_dir, "--base", base_dir)
    tokenizer = tiny_tokenizer()
    from transformers import AutoModelForCausalLM
    expected = contrastive_generate(AutoModelForCausalLM.from_pretrained(ft_dir).eval(), tokenizer, ["the cat"],
                                    AutoModelForCausalLM.from_pretrained(base_dir).eval(), max_new_tokens=4)
    assert json.loads(pair) == [{"prompt": "the cat", "response": expected[0]}]
    adapter = json.loads(run("--contrastive", "--model", base_dir, "--adapter", str(tmp_path / "adapter")))
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "adapter"))
    expected = contrastive_generate(loaded.eval(), tokenizer, ["the cat"],
                                    AutoModelForCausalLM.from_pretrained(base_dir).eval(), max_new_tokens=4)
    assert adapter == [{"prompt": "the cat", "response": expected[0]}]
    with pytest.raises(FtpluginsError, match="belong to the aligned-prefix defence"):
        run("--contrastive", "--model", ft_dir, "--base", base_dir, "--k", "3")
    with pytest.raises(FtpluginsError, match="no base model to contrast with"):
        run("--contrastive", "--model", ft_dir)
    with pytest.raises(FtpluginsError, match="--base is the base model of --contrastive"):
        run("--model", ft_dir, "--base", base_dir)


def test_beam_search_over_contrastive_scores_matches_rows_to_the_prompt_mask():
    tokenizer, ft, pt = tiny_tokenizer(), peaky_llama(seed=0), peaky_llama(seed=1)
    prompts = ["the cat", "a much longer prompt about dogs"]
    beams = contrastive_generate_ids(ft, tokenizer, prompts, pt, max_new_tokens=5, num_beams=3)
    alone = [contrastive_generate_ids(ft, tokenizer, [p], pt, max_new_tokens=5, num_beams=3)[0] for p in prompts]
    assert len(beams) == 2
    assert [b[:len(a)] for b, a in zip(beams, alone)] == alone  # padding and beam expansion change nothing


# --- iterative CGE ------------------------------------------------------------------------------------------------

def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _nll(model, tokenizer, text):
    ids_ = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return float(model(input_ids=ids_, labels=ids_).loss)


def test_iterative_exploration_trains_only_the_base_and_towards_its_samples():
    from ftplugins.tools.cge_explore import explore

    tokenizer, ft, pt = tiny_tokenizer(), peaky_llama(seed=0), peaky_llama(seed=1)
    ft_before, pt_before = _weights(ft), _weights(pt)
    initial_pt = copy.deepcopy(pt)
    seen = []
    samples = explore(ft, tokenizer, pt, steps=3, learning_rate=1e-2, max_new_tokens=6, num_beams=2,
                      on_sample=lambda step, text: seen.append((step, text)))
    assert len(samples) == 3 and seen == list(enumerate(samples))
    assert all(torch.equal(ft_before[k], v) for k, v in _weights(ft).items())  # the fine-tuned model never changes
    assert any(not torch.equal(pt_before[k], v) for k, v in _weights(pt).items())
    assert _nll(pt, tokenizer, samples[0]) < _nll(initial_pt, tokenizer, samples[0])  # pulled towards its samples

    static = peaky_llama(seed=1)
    explore(ft, tokenizer, static, steps=2, update=False, max_new_tokens=4, num_beams=1)
    assert all(torch.equal(pt_before[k], v) for k, v in _weights(static).items())  # --no_update


def test_iterative_exploration_refuses_a_base_that_shares_the_fine_tuned_weights():
    from peft import LoraConfig, get_peft_model

    from ftplugins.tools.cge_explore import explore

    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(FtpluginsError, match="must be a separate model"):
        explore(peft_model, tiny_tokenizer(), AdapterDisabled(peft_model), steps=1)
