"""Model soups (ftplugins.tools.soup): uniform and greedy soups of models, adapters and sparse deltas."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from ftplugins.cli import main as cli_main
from ftplugins.errors import FtpluginsError
from ftplugins.testing import tiny_llama, tiny_tokenizer
from ftplugins.tools import soup
from ftplugins.tools.heldout import loss_evaluator


def fine_tune(path, seed, scale=0.02, shard=None, dtype=None, **overrides):
    """The tiny Llama (seed 0) plus seeded noise: a stand-in for one fine-tune of a shared initialisation."""
    model = tiny_llama(seed=0, **overrides)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    if dtype is not None:
        model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def weights(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, name)))
    return out


def hand_mean(folders):
    loaded = [weights(f) for f in folders]
    return {k: torch.stack([w[k].double() for w in loaded]).mean(0).to(loaded[0][k].dtype) for k in loaded[0]}


def assert_equal_weights(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype
        torch.testing.assert_close(actual[key], expected[key], rtol=1.2e-7, atol=1e-9)  # fp32 rounding


def test_uniform_soup_equals_the_hand_average_and_keeps_config_and_tokenizer(tmp_path):
    folders = [fine_tune(tmp_path / f"ft{i}", i) for i in range(3)]
    soup.uniform(folders, str(tmp_path / "soup"))
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(folders))
    assert not torch.equal(weights(tmp_path / "soup")["model.norm.weight"], weights(folders[0])["model.norm.weight"])
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "soup" / name).read_bytes() == (tmp_path / "ft0" / name).read_bytes()
    assert not (tmp_path / "soup" / ".ftplugins-staging").exists()


def test_soups_stream_one_tensor_per_ingredient_at_a_time(tmp_path, monkeypatch):
    """However many ingredients, at most two tensors read from them are alive at once (the first ingredient's,
    kept for its dtype, and the one being added): memory does not grow with the number of ingredients."""
    import weakref

    from ftplugins.tools.ingredients import Ingredient

    folders = [fine_tune(tmp_path / f"ft{i}", i) for i in range(5)]
    alive, peak, read = set(), [0], Ingredient.get

    def counting_get(self, name):
        tensor = read(self, name)
        alive.add(id(tensor))
        weakref.finalize(tensor, alive.discard, id(tensor))
        peak[0] = max(peak[0], len(alive))
        return tensor

    monkeypatch.setattr(Ingredient, "get", counting_get)
    soup.uniform(folders, str(tmp_path / "soup"))
    assert 1 <= peak[0] <= 2
    peak[0] = 0
    soup.greedy(folders, str(tmp_path / "greedy"), lambda model: 0.0)
    assert 1 <= peak[0] <= 2  # the running sum is one fp32 model, not one per ingredient


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_soups_do_not_keep_the_ingredient_files_resident(tmp_path, monkeypatch):
    """safetensors memory-maps what it reads, and a mapping's pages stay in the resident set until it is unmapped:
    a soup must not keep what it has read of every ingredient resident (its RSS would grow to all of them, the bug
    the perf harness measured). At every read, the resident pages of the five ingredient files stay under two
    files' size (the tensors being read, the pages the kernel maps around them, the headers), where keeping them
    reaches about all five by the last tensor."""
    from ftplugins.tools.ingredients import Ingredient

    folders = [fine_tune(tmp_path / f"ft{i}", i, num_hidden_layers=4, intermediate_size=512) for i in range(5)]
    files = {os.path.realpath(os.path.join(f, "model.safetensors")) for f in folders}
    one_file = os.path.getsize(next(iter(files)))
    peak, read = [0], Ingredient.get

    def resident_bytes():
        total, counting = 0, False
        with open("/proc/self/smaps") as handle:
            for line in handle:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping's header line: its path is the last field
                    counting = line.split()[-1] in files
                elif counting and first == "Rss:":
                    total += int(line.split()[1]) * 1024
        return total

    def spying_get(self, name):
        tensor = read(self, name)
        peak[0] = max(peak[0], resident_bytes())
        return tensor

    monkeypatch.setattr(Ingredient, "get", spying_get)
    soup.uniform(folders, str(tmp_path / "soup"))
    assert 0 < peak[0] < 2 * one_file, (peak[0], one_file)


def test_sharded_ingredients_give_a_sharded_soup_with_the_same_layout(tmp_path):
    folders = [fine_tune(tmp_path / f"ft{i}", i, shard="20KB") for i in range(2)]
    shards = sorted(n for n in os.listdir(folders[0]) if n.endswith(".safetensors"))
    assert len(shards) > 1
    soup.uniform(folders, str(tmp_path / "soup"))
    assert sorted(n for n in os.listdir(tmp_path / "soup") if n.endswith(".safetensors")) == shards
    assert (tmp_path / "soup" / "model.safetensors.index.json").is_file()
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(folders))


def test_bf16_ingredients_average_in_high_precision_then_round_once(tmp_path):
    folders = [fine_tune(tmp_path / f"ft{i}", i, dtype=torch.bfloat16) for i in range(3)]
    soup.uniform(folders, str(tmp_path / "soup"))
    out, expected = weights(tmp_path / "soup"), hand_mean(folders)
    assert all(out[k].dtype == torch.bfloat16 and torch.equal(out[k], expected[k]) for k in expected)


def distance_score(target):
    """A held-out score with a known optimum: minus the squared distance of the weights to ``target``."""
    def evaluate(model):
        params = dict(model.named_parameters())
        return -sum(float((params[k].detach().double() - v.double()).pow(2).sum()) for k, v in target.items())
    return evaluate


def test_greedy_soup_beats_the_best_ingredient_and_rejects_the_harmful_one(tmp_path):
    target = {k: v.detach().clone() for k, v in tiny_llama(seed=0).named_parameters()}
    folders = [fine_tune(tmp_path / f"ft{i}", i, scale=0.02) for i in range(3)]
    folders.append(fine_tune(tmp_path / "far", 9, scale=0.5))  # far from the optimum: must be left out
    result = soup.greedy(folders, str(tmp_path / "soup"), distance_score(target))
    assert set(result.chosen) == set(folders[:3])
    assert result.chosen[0] == max(folders, key=lambda f: result.scores[f])  # the best ingredient starts the soup
    assert result.soup_score >= max(result.scores.values())
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(result.chosen))  # the exact mean of the chosen
    rescored = distance_score(target)(tiny_llama_from(tmp_path / "soup"))
    assert rescored == pytest.approx(result.soup_score, rel=1e-5)


def tiny_llama_from(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def test_greedy_ties_are_kept_with_ge_and_dropped_with_strict(tmp_path):
    a = fine_tune(tmp_path / "a", 1)
    b = fine_tune(tmp_path / "b", 2)
    constant = lambda model: 1.0  # noqa: E731 - every soup scores the same
    assert soup.greedy([a, b], str(tmp_path / "ge"), constant).chosen == [a, b]
    assert soup.greedy([a, b], str(tmp_path / "gt"), constant, strict=True).chosen == [a]


def test_greedy_soup_with_the_default_held_out_loss(tmp_path):
    folders = [fine_tune(tmp_path / f"ft{i}", i, scale=0.05) for i in range(3)]
    texts = ["1 + 2 = 3", "4 + 4 = 8", "2 + 5 = 7", "9 + 0 = 9"]
    evaluate = loss_evaluator(texts, tiny_tokenizer())
    result = soup.greedy(folders, str(tmp_path / "soup"), evaluate)
    assert result.soup_score >= max(result.scores.values())
    assert evaluate(tiny_llama_from(tmp_path / "soup")) == pytest.approx(result.soup_score, rel=1e-5)


def constant_predictor(token_id):
    """A tiny Llama that predicts ``token_id`` after any input: every embedding row is one vector, the blocks
    add nothing (o_proj, down_proj zero), so the last hidden state is constant, and only the head row of
    ``token_id`` sees it."""
    model = tiny_llama(seed=0)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed.copy_(embed[5].clone().expand_as(embed))  # (row 0 is the zero padding row)
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        hidden = model.model.norm(embed[:1].unsqueeze(0))[0, 0].clone()
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id] = hidden
    return model


def test_exact_match_held_out_score():
    """The share of prompt/target rows whose target the model predicts exactly (teacher-forced)."""
    from ftplugins.tools.heldout import exact_match_evaluator

    tokenizer = tiny_tokenizer()
    seven = tokenizer(" 7", add_special_tokens=False)["input_ids"]
    assert len(seven) == 1
    model = constant_predictor(seven[0])
    right = [{"prompt": p, "target": "7"} for p in ("1 + 6 =", "3 + 4 =")]
    wrong = [{"prompt": "1 + 5 =", "completion": " 6"}]
    assert exact_match_evaluator(right, tokenizer)(model) == 1.0
    assert exact_match_evaluator(wrong, tokenizer)(model) == 0.0
    assert exact_match_evaluator(right + wrong + wrong, tokenizer)(model) == 0.5
    with pytest.raises(FtpluginsError, match="needs 'prompt' and 'target'"):
        exact_match_evaluator([{"text": "1 + 2 = 3"}], tokenizer)
    with pytest.raises(FtpluginsError, match="held-out set is empty"):
        exact_match_evaluator([], tokenizer)


def test_an_empty_held_out_set_is_refused(tmp_path):
    with pytest.raises(FtpluginsError, match="held-out set is empty"):
        loss_evaluator([], tiny_tokenizer())
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(FtpluginsError, match="held-out set is empty"):
        loss_evaluator(str(tmp_path / "empty.jsonl"), tiny_tokenizer())


# --- adapters -------------------------------------------------------------------------------------


def save_adapter(path, seed, config, base):
    from peft import get_peft_model

    model = get_peft_model(tiny_llama_from(base), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(path)
    return str(path)


def lora(r=4):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"])


def test_adapter_soup_averages_adapter_tensors_and_keeps_the_adapter_config(tmp_path):
    base = fine_tune(tmp_path / "base", 0, scale=0.0)
    folders = [save_adapter(tmp_path / f"lora{i}", i, lora(), base) for i in range(3)]
    soup.uniform(folders, str(tmp_path / "soup"))
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(folders))
    assert json.loads((tmp_path / "soup" / "adapter_config.json").read_text())["r"] == 4
    evaluate = loss_evaluator(["1 + 2 = 3", "4 + 4 = 8"], tiny_tokenizer())
    result = soup.greedy(folders, str(tmp_path / "greedy"), evaluate, base=base)
    assert result.soup_score >= max(result.scores.values())
    assert_equal_weights(weights(tmp_path / "greedy"), hand_mean(result.chosen))


def test_adapter_configs_that_list_target_modules_in_another_order_still_soup(tmp_path):
    base = fine_tune(tmp_path / "base", 0, scale=0.0)
    folders = [save_adapter(tmp_path / f"lora{i}", i, lora(), base) for i in range(2)]
    first = json.loads((tmp_path / "lora0" / "adapter_config.json").read_text())
    config = json.loads((tmp_path / "lora1" / "adapter_config.json").read_text())
    config["target_modules"] = first["target_modules"][::-1]  # the same set, saved by another process
    (tmp_path / "lora1" / "adapter_config.json").write_text(json.dumps(config))
    soup.uniform(folders, str(tmp_path / "soup"))
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(folders))


def test_ftplugins_adapter_types_soup_too(tmp_path):
    from ftplugins.peft_types import peft_config

    base = fine_tune(tmp_path / "base", 0, scale=0.0)
    folders = [save_adapter(tmp_path / f"ssf{i}", i, peft_config("ssf", tiny_llama_from(base)), base) for i in range(2)]
    soup.uniform(folders, str(tmp_path / "soup"))
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(folders))


def test_adapters_of_different_ranks_are_refused_with_the_reason(tmp_path):
    base = fine_tune(tmp_path / "base", 0, scale=0.0)
    a = save_adapter(tmp_path / "r4", 1, lora(4), base)
    b = save_adapter(tmp_path / "r8", 2, lora(8), base)
    with pytest.raises(FtpluginsError, match=r"different adapter configs: lora_alpha=8 vs 16"):
        soup.uniform([a, b], str(tmp_path / "soup"))
    assert not (tmp_path / "soup").exists()


# --- sparse deltas --------------------------------------------------------------------------------


def test_the_mean_of_sparse_deltas_is_the_delta_of_the_soup_of_their_models(tmp_path):
    from ftplugins.sparse.delta import apply_to_model_dir, diff_delta, load_delta, save_delta

    base = fine_tune(tmp_path / "base", 0, scale=0.0)
    folders, deltas = [], []
    for i in range(3):
        folders.append(fine_tune(tmp_path / f"ft{i}", i))
        deltas.append(save_delta(diff_delta(weights(folders[-1]), weights(base)), str(tmp_path / f"d{i}.safetensors")))
    soup.soup_deltas(deltas, str(tmp_path / "mean.safetensors"))
    apply_to_model_dir(base, [load_delta(str(tmp_path / "mean.safetensors"))], str(tmp_path / "applied"))
    soup.uniform(folders, str(tmp_path / "soup"))
    assert_equal_weights(weights(tmp_path / "applied"), weights(tmp_path / "soup"))


def test_greedy_soup_of_sparse_deltas_keeps_the_helpful_ones(tmp_path, capsys):
    from ftplugins.sparse.delta import diff_delta, load_delta, save_delta

    target = {k: v.detach().clone() for k, v in tiny_llama(seed=0).named_parameters()}
    base = fine_tune(tmp_path / "base", 0, scale=0.0)
    paths = []
    for i, scale in enumerate([0.02, 0.02, 0.5, 0.02]):  # the third is far from the optimum
        folder = fine_tune(tmp_path / f"ft{i}", i, scale=scale)
        paths.append(save_delta(diff_delta(weights(folder), weights(base)), str(tmp_path / f"d{i}.safetensors")))
    result = soup.greedy_deltas(paths, base, str(tmp_path / "greedy.safetensors"), distance_score(target))
    assert sorted(result.chosen) == sorted(paths[:2] + paths[3:])
    assert result.soup_score >= max(result.scores.values())
    soup.soup_deltas(result.chosen, str(tmp_path / "expected.safetensors"))
    got, expected = load_delta(str(tmp_path / "greedy.safetensors")), load_delta(str(tmp_path / "expected.safetensors"))
    assert got.tensors.keys() == expected.tensors.keys()
    assert all(torch.equal(got.tensors[k].values, expected.tensors[k].values) for k in got.tensors)
    (tmp_path / "heldout.jsonl").write_text('{"text": "1 + 2 = 3"}\n')
    cli_main(["soup", "--deltas", *paths[:2], "-o", str(tmp_path / "cli.safetensors"), "--greedy",
              "--heldout", str(tmp_path / "heldout.jsonl"), "--base", base])
    assert (tmp_path / "cli.safetensors").is_file()
    with pytest.raises(SystemExit):
        cli_main(["soup", "--deltas", *paths[:2], "-o", str(tmp_path / "x.safetensors"), "--greedy",
                  "--heldout", str(tmp_path / "heldout.jsonl")])
    assert "--greedy --deltas needs --base" in capsys.readouterr().err


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("other, message", [
    (dict(hidden_size=48), "different architectures"),
    (dict(dtype=torch.float16), "dtype F32 vs F16"),
    (dict(tie_word_embeddings=True), r"different architectures \(config.json\): tie_word_embeddings=False vs True"),
])
def test_mismatched_ingredients_are_refused_by_name_before_writing(tmp_path, other, message):
    a = fine_tune(tmp_path / "a", 1)
    b = fine_tune(tmp_path / "b", 2, **other)
    with pytest.raises(FtpluginsError, match=message) as info:
        soup.uniform([a, b], str(tmp_path / "soup"))
    assert str(tmp_path / "b") in str(info.value)
    assert not (tmp_path / "soup").exists()


def test_shape_mismatch_under_one_config_is_named(tmp_path):
    a = fine_tune(tmp_path / "a", 1)
    b = fine_tune(tmp_path / "b", 2)
    tensors = weights(b)
    tensors["model.norm.weight"] = torch.zeros(31)
    from safetensors.torch import save_file

    save_file(tensors, os.path.join(b, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FtpluginsError, match=r"model.norm.weight has shape \(32,\) vs \(31,\)"):
        soup.uniform([a, b], str(tmp_path / "soup"))
    assert not (tmp_path / "soup").exists()


def test_other_bad_inputs(tmp_path):
    a = fine_tune(tmp_path / "a", 1)
    with pytest.raises(FtpluginsError, match="at least one ingredient"):
        soup.uniform([], str(tmp_path / "soup"))
    with pytest.raises(FtpluginsError, match="is not a folder"):
        soup.uniform([a, str(tmp_path / "missing")], str(tmp_path / "soup"))
    with pytest.raises(FtpluginsError, match="is one of the ingredients"):
        soup.uniform([a], a)
    with pytest.raises(FtpluginsError, match="not empty"):
        soup.uniform([a], str(tmp_path))
    (tmp_path / "bin").mkdir()
    torch.save({}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(FtpluginsError, match="no model.safetensors"):
        soup.uniform([a, str(tmp_path / "bin")], str(tmp_path / "soup"))
    assert not (tmp_path / "soup").exists()


def test_soup_command(tmp_path, capsys):
    folders = [fine_tune(tmp_path / f"ft{i}", i) for i in range(2)]
    cli_main(["soup", *folders, "-o", str(tmp_path / "soup")])
    assert_equal_weights(weights(tmp_path / "soup"), hand_mean(folders))
    (tmp_path / "heldout.jsonl").write_text('{"text": "1 + 2 = 3"}\n{"text": "2 + 2 = 4"}\n')
    cli_main(["soup", *folders, "-o", str(tmp_path / "greedy"), "--greedy",
              "--heldout", str(tmp_path / "heldout.jsonl")])
    report = json.loads((tmp_path / "greedy" / "soup.json").read_text())
    assert report["soup_score"] >= max(report["scores"].values())
    (tmp_path / "qa.jsonl").write_text('{"prompt": "1 + 2 =", "target": "3"}\n')
    cli_main(["soup", *folders, "-o", str(tmp_path / "em"), "--greedy", "--heldout", str(tmp_path / "qa.jsonl"),
              "--heldout-metric", "exact_match"])
    assert 0.0 <= json.loads((tmp_path / "em" / "soup.json").read_text())["soup_score"] <= 1.0
    with pytest.raises(SystemExit):
        cli_main(["soup", *folders, "-o", str(tmp_path / "x"), "--greedy"])  # no held-out set: one line, status 2
    assert "--heldout" in capsys.readouterr().err


# --- the plugin: checkpoint soup ------------------------------------------------------------------


def soup_trainer(tmp_path, max_steps=3, peft_config=None, **options):
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.testing import arithmetic_dataset
    from ftplugins.tools.soup_plugin import plugin

    args = cpu_args(SFTConfig, tmp_path / "run", max_steps=max_steps, save_strategy="steps", save_steps=1,
                    learning_rate=1e-2)
    cls = ftplugins.compose(SFTTrainer, [plugin], **options)
    return cls(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(16), processing_class=tiny_tokenizer(),
               peft_config=peft_config)


def test_checkpoint_soup_averages_the_last_k_checkpoints_beside_the_model(tmp_path):
    trainer = soup_trainer(tmp_path, soup_last_k=2)
    trainer.train()
    run = tmp_path / "run"
    expected = hand_mean([run / "checkpoint-2", run / "checkpoint-3"])
    assert_equal_weights(weights(run / "soup"), expected)
    assert not torch.equal(expected["lm_head.weight"], weights(run / "checkpoint-3")["lm_head.weight"])
    report = json.loads((run / "soup" / "soup.json").read_text())
    assert report["chosen"] == [str(run / "checkpoint-2"), str(run / "checkpoint-3")]
    assert (run / "soup" / "config.json").is_file() and not (run / "soup" / "optimizer.pt").exists()


def test_checkpoint_soup_of_a_lora_run_averages_the_adapters(tmp_path):
    soup_trainer(tmp_path, soup_last_k=3, peft_config=lora()).train()
    run = tmp_path / "run"
    assert_equal_weights(weights(run / "soup"), hand_mean([run / f"checkpoint-{i}" for i in (1, 2, 3)]))
    assert json.loads((run / "soup" / "adapter_config.json").read_text())["r"] == 4


def test_checkpoint_soup_greedy_from_the_plugin(tmp_path):
    (tmp_path / "heldout.jsonl").write_text('{"text": "1 + 2 = 3"}\n{"text": "2 + 2 = 4"}\n')
    heldout = str(tmp_path / "heldout.jsonl")
    trainer = soup_trainer(tmp_path, soup_last_k=3, soup_method="greedy", soup_heldout=heldout)
    trainer.train()
    report = json.loads((tmp_path / "run" / "soup" / "soup.json").read_text())
    assert report["method"] == "greedy" and report["soup_score"] >= max(report["scores"].values())
    assert_equal_weights(weights(tmp_path / "run" / "soup"), hand_mean(report["chosen"]))


@pytest.mark.parametrize("args, options, message", [
    (dict(save_strategy="no"), {}, "save_strategy='no'"),
    (dict(save_strategy="steps", save_total_limit=2), dict(soup_last_k=3), "save_total_limit=2"),
    (dict(save_strategy="steps"), dict(soup_method="greedy"), "needs a held-out score"),
])
def test_checkpoint_soup_bad_settings(tmp_path, args, options, message):
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.testing import arithmetic_dataset
    from ftplugins.tools.soup_plugin import plugin

    with pytest.raises(FtpluginsError, match=message):
        cls = ftplugins.compose(SFTTrainer, [plugin], **options)
        cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, **args), train_dataset=arithmetic_dataset(8),
            processing_class=tiny_tokenizer())
