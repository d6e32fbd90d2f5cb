"""aligned_prefix (NOICE defence): the aligned model writes k response tokens, the fine-tuned one continues."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.aligned_prefix import generate, generate_ids
from ftplugins.testing import arithmetic_dataset, save_tiny_llama, tiny_llama, tiny_tokenizer

PROMPTS = ["1+2=?", "7+8+9+1+2+3=?", "4=?", "5+5+5=?"]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def aligned():
    return tiny_llama(seed=0).eval()


@pytest.fixture(scope="module")
def finetuned():
    return tiny_llama(seed=1).eval()


def greedy(model, tokenizer, ids, n):
    """Plain greedy decoding of one unpadded prompt (token ids), new tokens only."""
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def lora_model(seed=0):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(tiny_llama(seed=seed), config).eval()


# invariants


def test_first_k_tokens_are_the_aligned_models_and_the_rest_the_finetuned_models(aligned, finetuned, tokenizer):
    k, budget = 4, 10
    outs = generate_ids(aligned, finetuned, tokenizer, PROMPTS, k=k, max_new_tokens=budget)
    for prompt, out in zip(PROMPTS, outs):
        ids = tokenizer(prompt)["input_ids"]
        assert out[:k] == greedy(aligned, tokenizer, ids, k)
        assert out[k:] == greedy(finetuned, tokenizer, ids + out[:k], budget - k)
        assert len(out) == budget  # a random tiny model does not stop early here
    # the two models disagree, so the split point is visible: neither model alone gives this output
    assert any(out != greedy(finetuned, tokenizer, tokenizer(p)["input_ids"], budget) for p, out in zip(PROMPTS, outs))
    assert any(out != greedy(aligned, tokenizer, tokenizer(p)["input_ids"], budget) for p, out in zip(PROMPTS, outs))


def test_k0_is_plain_decoding_of_the_finetuned_model_bit_for_bit(aligned, finetuned, tokenizer):
    budget = 8
    outs = generate_ids(aligned, finetuned, tokenizer, PROMPTS, k=0, max_new_tokens=budget)
    tokenizer_left = tiny_tokenizer()
    tokenizer_left.padding_side = "left"
    batch = tokenizer_left(PROMPTS, return_tensors="pt", padding=True)
    plain = finetuned.generate(**batch, max_new_tokens=budget, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert outs == plain[:, batch["input_ids"].shape[1]:].tolist()


def test_same_model_twice_is_its_greedy_decoding(aligned, tokenizer):
    outs = generate_ids(aligned, aligned, tokenizer, PROMPTS, k=3, max_new_tokens=8)
    assert outs == [greedy(aligned, tokenizer, tokenizer(p)["input_ids"], 8) for p in PROMPTS]


def test_batched_equals_one_by_one(aligned, finetuned, tokenizer):
    batched = generate_ids(aligned, finetuned, tokenizer, PROMPTS, k=3, max_new_tokens=7)
    single = [generate_ids(aligned, finetuned, tokenizer, [p], k=3, max_new_tokens=7)[0] for p in PROMPTS]
    assert batched == single


def test_peft_form_equals_two_model_form_with_the_base_as_aligned(tokenizer):
    model = lora_model(seed=0)
    base = tiny_llama(seed=0).eval()  # the same base weights, a separate copy
    peft_form = generate_ids(None, model, tokenizer, PROMPTS, k=4, max_new_tokens=9)
    two_models = generate_ids(base, model, tokenizer, PROMPTS, k=4, max_new_tokens=9)
    assert peft_form == two_models
    # the adapter matters: with it on, the first k tokens would be different
    adapted = [greedy(model, tokenizer, tokenizer(p)["input_ids"], 4) for p in PROMPTS]
    assert [o[:4] for o in peft_form] != adapted
    # and the adapter is back on afterwards
    assert [greedy(model, tokenizer, tokenizer(p)["input_ids"], 4) for p in PROMPTS] == adapted


def eos_writer(tokenizer):
    """A tiny Llama whose every next token is EOS (a zero head plus an EOS bias)."""
    model = tiny_llama(seed=0).eval()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 10.0
    model.lm_head = head
    return model


def test_a_prefix_that_ends_with_eos_is_not_continued(finetuned, tokenizer):
    outs = generate_ids(eos_writer(tokenizer), finetuned, tokenizer, PROMPTS, k=5, max_new_tokens=10)
    assert outs == [[tokenizer.eos_token_id]] * len(PROMPTS)
    assert generate(eos_writer(tokenizer), finetuned, tokenizer, PROMPTS, k=5) == [""] * len(PROMPTS)


def test_continuation_stops_at_eos(aligned, tokenizer):
    outs = generate_ids(aligned, eos_writer(tokenizer), tokenizer, PROMPTS, k=2, max_new_tokens=10)
    for prompt, out in zip(PROMPTS, outs):
        assert out[:2] == greedy(aligned, tokenizer, tokenizer(prompt)["input_ids"], 2)
        assert out[2:] == [tokenizer.eos_token_id]


def test_forced_prefix_variant(aligned, finetuned, tokenizer):
    forced = "I'm sorry, I cannot"
    fixed = tokenizer(forced, add_special_tokens=False)["input_ids"]
    outs = generate_ids(None, finetuned, tokenizer, PROMPTS, forced=forced, max_new_tokens=len(fixed) + 4)
    for prompt, out in zip(PROMPTS, outs):
        assert out[: len(fixed)] == fixed
        assert out[len(fixed):] == greedy(finetuned, tokenizer, tokenizer(prompt)["input_ids"] + fixed, 4)
    text = generate(None, finetuned, tokenizer, PROMPTS[:1], forced=forced, max_new_tokens=len(fixed) + 4)[0]
    assert text.startswith(forced)


def test_decoded_output_is_prefix_plus_continuation(aligned, finetuned, tokenizer):
    ids = generate_ids(aligned, finetuned, tokenizer, PROMPTS, k=3, max_new_tokens=6)
    assert generate(aligned, finetuned, tokenizer, PROMPTS, k=3, max_new_tokens=6) == \
        tokenizer.batch_decode(ids, skip_special_tokens=True)


# errors and the plugin object


def test_no_aligned_model_and_no_adapter_is_refused(finetuned, tokenizer):
    with pytest.raises(FtpluginsError, match="PEFT model"):
        generate(None, finetuned, tokenizer, PROMPTS, k=3)
    with pytest.raises(FtpluginsError, match="k=-1"):
        generate(finetuned, finetuned, tokenizer, PROMPTS, k=-1)
    with pytest.raises(FtpluginsError, match="max_length"):
        generate(finetuned, finetuned, tokenizer, PROMPTS, k=1, max_length=5)


def test_selecting_it_for_training_is_refused_with_a_pointer_to_generate(tmp_path):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["aligned_prefix"])
    with pytest.raises(FtpluginsError, match="generation-time defence.*ftplugins generate"):
        cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
            processing_class=tiny_tokenizer())


def test_bad_options_are_refused():
    from trl import SFTTrainer

    with pytest.raises(OptionError, match="aligned_prefix_k"):
        ftplugins.compose(SFTTrainer, ["aligned_prefix"], aligned_prefix_k=-1)


def test_plugin_is_listed_with_its_options():
    from ftplugins.registry import load

    plugin = load("aligned_prefix")
    assert {f.name: f.default for f in plugin.option_fields()} == {"aligned_prefix_k": 15, "aligned_prefix_forced": ""}
    assert plugin.contributes() == ["validate"]


# command line


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned-prefix")
    aligned_dir = save_tiny_llama(str(root / "aligned"), seed=0)
    finetuned_dir = save_tiny_llama(str(root / "finetuned"), seed=1)
    adapter_dir = str(root / "adapter")
    lora_model(seed=0).save_pretrained(adapter_dir)
    return aligned_dir, finetuned_dir, adapter_dir


def run_cli(argv, capsys):
    from ftplugins.cli import main

    main(["generate", *argv, "--json"])
    return [row["response"] for row in json.loads(capsys.readouterr().out)]


def test_cli_two_models(model_dirs, aligned, finetuned, tokenizer, capsys):
    aligned_dir, finetuned_dir, _ = model_dirs
    argv = ["--model", finetuned_dir, "--aligned", aligned_dir, "--k", "3", "--max_new_tokens", "6"]
    got = run_cli([*argv, *sum((["--prompt", p] for p in PROMPTS), [])], capsys)
    assert got == generate(aligned, finetuned, tokenizer, PROMPTS, k=3, max_new_tokens=6)


def test_cli_base_plus_adapter(model_dirs, tokenizer, capsys):
    _, _, adapter_dir = model_dirs
    base_dir = model_dirs[0]  # saved with seed 0, the adapter's base
    got = run_cli(["--model", base_dir, "--adapter", adapter_dir, "--k", "4", "--max_new_tokens", "9",
                   "--prompt", PROMPTS[1]], capsys)
    assert got == generate(None, lora_model(seed=0), tokenizer, PROMPTS[1:2], k=4, max_new_tokens=9)


def test_cli_without_an_aligned_model_exits_with_a_clear_message(model_dirs, capsys):
    from ftplugins.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", model_dirs[1], "--prompt", "1+2=?"])
    assert exc.value.code == 2
    assert "--aligned" in capsys.readouterr().err


class ScriptedModel(torch.nn.Module):
    """A stand-in whose ``generate`` writes ``token`` repeatedly, or ``token, EOS`` then padding for prompts of
    odd length: batches where some rows stop early and the rest run on (as HF pads finished rows)."""

    def __init__(self, token, eos, pad):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.token, self.eos, self.pad = token, eos, pad

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for mask in attention_mask.tolist():
            if sum(mask) % 2:
                rows.append(([self.token, self.eos] + [self.pad] * max_new_tokens)[:max_new_tokens])
            else:
                rows.append([self.token] * max_new_tokens)
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_rows_that_stop_early_are_cut_after_eos_and_not_continued(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    aligned_stub, finetuned_stub = ScriptedModel(50, eos, pad), ScriptedModel(60, eos, pad)
    prompts = ["1+2=?", "1+2+3", "4=?", "4"]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    outs = generate_ids(aligned_stub, finetuned_stub, tokenizer, prompts, k=4, max_new_tokens=7)
    for n, out in zip(lengths, outs):
        if n % 2:  # the aligned model stopped after one token: no padding kept, no continuation
            assert out == [50, eos]
        else:  # prefix of 4, then the fine-tuned model; its prompt is now n + 4 long (even): it runs on
            assert out == [50] * 4 + [60] * 3
    assert {n % 2 for n in lengths} == {0, 1}
