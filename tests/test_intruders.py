"""Intruder dimensions (ftplugins.tools.intruders): planted directions, invariants, sources, command, callback."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ftplugins.cli import main as cli_main
from ftplugins.errors import FtpluginsError
from ftplugins.testing import tiny_llama, tiny_tokenizer
from ftplugins.tools import intruders

TARGET = "model.layers.1.self_attn.q_proj.weight"


def spread_matrix(n=32, seed=0):
    """A square matrix with well-separated singular values 2 ... 0.2 and random singular vectors."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return u, torch.linspace(2.0, 0.2, n, dtype=torch.float64), v


def base_folder(tmp_path):
    """The tiny Llama with the target matrix replaced by a known SVD; returns (folder, U0, σ, V0)."""
    model = tiny_llama(seed=0)
    u, s, v = spread_matrix()
    with torch.no_grad():
        model.get_parameter(TARGET).copy_((u * s) @ v.T)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    return str(tmp_path / "base"), u, s, v


def lora_adapter(tmp_path, base, b, a):
    """A rank-1 LoRA on q_proj with scaling 1 whose update is exactly ``b @ a``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj"], init_lora_weights=False))
    layer = model.get_submodule("base_model.model.model.layers.1.self_attn.q_proj")
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a.reshape(1, -1))
        layer.lora_B["default"].weight.copy_(b.reshape(-1, 1))
        for name, module in model.named_modules():  # the other layers: no update
            if name.endswith("q_proj") and module is not layer:
                module.lora_B["default"].weight.zero_()
    model.save_pretrained(tmp_path / "adapter")
    return str(tmp_path / "adapter")


def planted_direction(u):
    """A unit vector spread evenly over every pre-trained left singular vector: cosine 1/√32 ≈ 0.18 with each."""
    return u.sum(dim=1) / u.shape[1] ** 0.5


def test_a_lora_update_along_a_new_direction_is_exactly_the_planted_intruder(tmp_path):
    base, u, s, v = base_folder(tmp_path)
    new = planted_direction(u)
    adapter = lora_adapter(tmp_path, base, (10 * s[0] * new).float(), v[:, 5].float())
    report = intruders.analyze(intruders.pairs_for(base, adapter))
    by_name = {m.name: m for m in report.matrices}
    assert report.total(0.5) == 1 and by_name[TARGET].counts[0.5] == 1
    assert by_name[TARGET].intruders == [0]  # the largest fine-tuned direction, as planted (σ = 20 > 2)
    sim = intruders.similarity(*[w for n, *w in intruders.pairs_for(base, adapter) if n == TARGET][0])
    assert float(sim[0].max()) < 0.3  # the planted vector resembles no pre-trained one (ε = 0.5)
    assert float(sim[1:].max(dim=1).values.min()) > 0.8  # every other top-k vector stays near a pre-trained one
    assert len(by_name) == 2  # the two adapted q_proj matrices, nothing else
    assert report.as_json()["per_layer"]["0.5"] == {"0": 0, "1": 1}
    assert report.as_json()["per_kind"]["0.5"] == {"self_attn.q_proj": 1}


def test_an_update_inside_the_pretrained_span_yields_none(tmp_path):
    base, u, s, v = base_folder(tmp_path)
    adapter = lora_adapter(tmp_path, base, (0.7 * u[:, 3]).float(), v[:, 3].float())  # σ_3 grows, vectors stay
    report = intruders.analyze(intruders.pairs_for(base, adapter), epsilons=[0.5, 0.9])
    assert report.total(0.5) == 0 and report.total(0.9) == 0


def test_adapter_analysis_restores_the_base_weights_bit_for_bit(tmp_path):
    base, u, s, v = base_folder(tmp_path)
    model = intruders.load_adapter_model(base, lora_adapter(tmp_path, base, planted_direction(u).float(),
                                                            v[:, 0].float()))
    before = {k: t.clone() for k, t in model.state_dict().items()}
    list(intruders.adapter_pair(model))
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A"))


def test_invariants_of_one_matrix():
    u, s, v = spread_matrix()
    w0 = ((u * s) @ v.T).float()
    assert intruders.matrix_intruders("w", w0, w0.clone()).counts == {0.5: 0}  # W = W0 gives 0
    flipped = u.clone()
    flipped[:, ::2] *= -1  # sign flips of singular vectors change nothing
    w_flipped = ((flipped * s) @ v.T).float()
    assert intruders.similarity(w0, w0 + 0).allclose(intruders.similarity(w_flipped, w0), atol=1e-4)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(32, 32, generator=generator)
    result = intruders.matrix_intruders("w", w0, w0 + 10 * noise, k=10, epsilons=[0.5, 1.0])
    assert result.counts[1.0] == 10 and 1 <= result.counts[0.5] <= 10  # ≤ k; a large random update gives ≥ 1
    rank_one = torch.randn(32, 1, generator=generator) @ torch.randn(1, 32, generator=generator)
    assert intruders.matrix_intruders("w", w0, w0 + 5 * rank_one).counts[0.5] >= 1


def save_model(path, transform=None):
    model = tiny_llama(seed=0)
    if transform is not None:
        with torch.no_grad():
            transform(model)
    model.save_pretrained(path)
    return str(path)


def test_model_pair_and_sparse_delta_give_the_same_counts(tmp_path):
    from safetensors.torch import load_file

    from ftplugins.sparse.delta import diff_delta, save_delta

    u, s, v = spread_matrix()
    new = planted_direction(u)

    def plant(model):
        model.get_parameter(TARGET).copy_(((u * s) @ v.T + 20 * torch.outer(new, v[:, 2])).float())

    base = save_model(tmp_path / "base", lambda m: m.get_parameter(TARGET).copy_(((u * s) @ v.T).float()))
    tuned = save_model(tmp_path / "tuned", plant)
    delta = save_delta(diff_delta(load_file(os.path.join(tuned, "model.safetensors")),
                                  load_file(os.path.join(base, "model.safetensors"))), str(tmp_path / "d.safetensors"))
    full = intruders.analyze(intruders.pairs_for(base, tuned))
    sparse = intruders.analyze(intruders.pairs_for(base, delta))
    assert full.total(0.5) == sparse.total(0.5) == 1
    assert {m.name for m in full.matrices if m.counts[0.5]} == {m.name for m in sparse.matrices if m.counts[0.5]} \
        == {TARGET}
    assert all("embed" not in m.name and "lm_head" not in m.name for m in full.matrices)  # the paper's selection


def test_analyze_intruders_command_writes_json_and_png(tmp_path, capsys):
    u, s, v = spread_matrix()
    base = save_model(tmp_path / "base")
    tuned = save_model(tmp_path / "tuned", lambda m: m.get_parameter(TARGET).add_(
        20 * torch.outer(planted_direction(u), v[:, 2]).float()))
    cli_main(["analyze", "intruders", base, tuned, "-o", str(tmp_path / "out" / "intruders.json"),
              "--epsilon", "0.5", "--epsilon", "0.9", "--plot", TARGET])
    report = json.loads((tmp_path / "out" / "intruders.json").read_text())
    assert report["k"] == 10 and report["epsilons"] == [0.5, 0.9]
    assert report["matrices"][TARGET]["counts"]["0.5"] >= 1
    assert sum(m["counts"]["0.5"] for n, m in report["matrices"].items() if n != TARGET) == 0
    pytest.importorskip("matplotlib")
    assert (tmp_path / "out" / "intruders.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("settings, message", [
    (dict(k=0), "k=0"),
    (dict(epsilons=[1.5]), r"epsilon \[1.5\]"),
    (dict(epsilons=[]), "epsilon"),
])
def test_bad_settings_are_one_line_errors(tmp_path, settings, message):
    base = save_model(tmp_path / "base")
    with pytest.raises(FtpluginsError, match=message):
        intruders.analyze(intruders.pairs_for(base, base), **settings)


def test_bad_sources_are_one_line_errors(tmp_path):
    base = save_model(tmp_path / "base")
    with pytest.raises(FtpluginsError, match="no weight matrix to analyse"):
        intruders.analyze(intruders.pairs_for(base, base, include="no_such_matrix"))
    with pytest.raises(FtpluginsError, match="does not exist"):
        intruders.pairs_for(base, str(tmp_path / "missing"))
    with pytest.raises(FtpluginsError, match="base model .* is not a folder"):
        intruders.pairs_for(str(tmp_path / "missing"), base)


# --- the plugin: counts logged during training -----------------------------------------------------


def train(tmp_path, plugins, peft_config=None, **options):
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.testing import arithmetic_dataset

    cls = ftplugins.compose(SFTTrainer, plugins, **options)
    trainer = cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, max_steps=3, learning_rate=5e-2),
                  train_dataset=arithmetic_dataset(16), processing_class=tiny_tokenizer(), peft_config=peft_config)
    trainer.train()
    return trainer


def logged(trainer):
    return [(e["step"], e) for e in trainer.state.log_history if "intruders/total" in e]


def test_the_callback_logs_counts_every_n_steps_in_full_fine_tuning(tmp_path):
    from ftplugins.tools.intruders_plugin import plugin

    trainer = train(tmp_path, [plugin], intruders_every=2)
    entries = logged(trainer)
    assert [step for step, _ in entries] == [2]
    counts = entries[0][1]
    matrices = 2 * 7  # q, k, v, o, gate, up, down in each of the two layers
    assert 0 <= counts["intruders/total"] <= 10 * matrices
    assert counts["intruders/total"] == sum(v for k, v in counts.items() if k.startswith("intruders/self_attn")
                                            or k.startswith("intruders/mlp"))


def test_the_callback_on_a_lora_run_leaves_training_unchanged(tmp_path):
    from peft import LoraConfig

    from ftplugins.tools.intruders_plugin import plugin

    config = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    with_callback = train(tmp_path / "a", [plugin], peft_config=LoraConfig(**config), intruders_every=1)
    without = train(tmp_path / "b", [], peft_config=LoraConfig(**config))
    assert [step for step, _ in logged(with_callback)] == [1, 2, 3]
    assert set(logged(with_callback)[0][1]) >= {"intruders/self_attn.q_proj", "intruders/self_attn.v_proj"}
    a, b = with_callback.model.state_dict(), without.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # merge + restore is bit-exact


def test_intruders_options_are_checked():
    import ftplugins
    from ftplugins.tools.intruders_plugin import plugin

    from trl import SFTTrainer

    with pytest.raises(FtpluginsError, match="--intruders_every 0: expected a positive whole number"):
        ftplugins.compose(SFTTrainer, [plugin], intruders_every=0)
    with pytest.raises(FtpluginsError, match="--intruders_epsilon 2.0"):
        ftplugins.compose(SFTTrainer, [plugin], intruders_epsilon=2.0)


@pytest.mark.parametrize("method", ["ssf", "block_lora"])
def test_ftplugins_adapters_are_merged_one_layer_at_a_time_like_a_merged_model(tmp_path, method):
    from peft import get_peft_model

    from ftplugins.peft_types import peft_config

    base = save_model(tmp_path / "base")
    model = tiny_llama(seed=0)
    adapted = get_peft_model(model, peft_config(method, model))
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.3)
    adapted.save_pretrained(tmp_path / "adapter")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    layerwise = intruders.analyze(intruders.pairs_for(base, str(tmp_path / "adapter")), epsilons=[0.5, 0.9])
    whole = intruders.analyze(intruders.pairs_for(base, str(tmp_path / "merged")), epsilons=[0.5, 0.9])
    changed = {m.name: m.counts for m in whole.matrices if m.name in {n.name for n in layerwise.matrices}}
    assert {m.name: m.counts for m in layerwise.matrices} == changed
    assert layerwise.total(0.9) > 0
