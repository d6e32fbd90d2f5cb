"""Probing and pruning analysis (ftplugins.tools.probe_prune): probes, the wrapper units, reverse fine-tuning."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from ftplugins.errors import FtpluginsError
from ftplugins.testing import tiny_llama, tiny_tokenizer
from ftplugins.tools import behaviour, probe_prune, probing, reverse_ft, wrapper_units

#: MLP units of the tiny Llama that are dead in the constructed base and that the constructed fine-tune uses.
PLANTED = {"model.layers.0.mlp.down_proj": [3, 17, 40], "model.layers.1.mlp.down_proj": [5, 60]}


def digit_texts(n=80, seed=0):
    """Texts whose label (the planted property) is which digits they use: linearly decodable from the embeddings."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        digits = "123" if i % 2 else "789"
        first, second = ("".join(rng.choice(digits) for _ in range(n)) for n in (3, 2))
        texts.append(f"Q: {first}+{second}")
        labels.append("low" if i % 2 else "high")
    return texts, labels


def constructed_pair():
    """A base whose PLANTED units are dead (zero output column) and a fine-tune that only adds a wrapper there."""
    base = tiny_llama(seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, units in PLANTED.items():
            base.get_submodule(name).weight[:, units] = 0
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, units in PLANTED.items():
            mlp = tuned.get_submodule(name.rsplit(".", 1)[0])
            mlp.down_proj.weight[:, units] = torch.randn(mlp.down_proj.weight.shape[0], len(units), generator=generator)
            mlp.up_proj.weight[units] += torch.randn(len(units), mlp.up_proj.weight.shape[1], generator=generator)
    return base, tuned


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, saved):
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


# --- probes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_a_probe_decodes_a_planted_linear_property_and_not_random_labels(backend):
    if backend == "sklearn":
        pytest.importorskip("sklearn")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 8, generator=generator)
    direction = torch.randn(8, generator=generator)
    planted = (features @ direction > 0).long()
    random_labels = torch.randint(0, 2, (400,), generator=generator)
    train, test = probing.split_indices(400, 0.3, seed=0)
    assert probing.probe_accuracy(features, planted, train, test, backend) >= 0.95
    assert probing.probe_accuracy(features, random_labels, train, test, backend) < 0.75


def test_the_torch_probe_agrees_with_sklearn_on_three_classes():
    pytest.importorskip("sklearn")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(150, 8, generator=generator)
    labels = (features[:, :3] + 0.3 * torch.randn(150, 3, generator=generator)).argmax(1)
    train, test = probing.split_indices(150, 0.3, seed=1)
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = probing.standardise(features[train], features[test])
    ours = probing.fit_torch_probe(x_train, labels[train]).predict(x_test)
    fitted = LogisticRegression(C=1.0, max_iter=1000).fit(x_train.numpy(), labels[train].numpy())
    theirs = fitted.predict(x_test.numpy())
    assert (ours == torch.as_tensor(theirs)).float().mean() >= 0.97  # same model and loss; solvers may differ a hair


def test_layer_probes_on_a_tiny_llama_find_the_property_and_leave_the_model_unchanged():
    model, tokenizer = tiny_llama(seed=0), tiny_tokenizer()
    model.train()
    saved = state(model)
    texts, labels = digit_texts()
    features = probing.layer_features(model, tokenizer, texts)
    assert features.shape == (3, len(texts), 32)  # embeddings + 2 layers
    _names, y = probe_prune.encode_labels(labels)
    accuracies = probing.layer_accuracies(features, y, backend="torch")
    assert accuracies[0] >= 0.95  # the digits' embeddings carry the property linearly
    assert model.training and same_state(model, saved)


# --- the wrapper units -------------------------------------------------------------------------------------------


def test_ranking_finds_exactly_the_planted_wrapper_units():
    base, tuned = constructed_pair()
    ranked = wrapper_units.rank_units(base, tuned)
    planted = {(name, j) for name, units in PLANTED.items() for j in units}
    top = {(u.out, u.index) for u in ranked[:len(planted)]}
    assert top == planted
    assert all(u.score == 0 for u in ranked[len(planted):])  # nothing else changed
    assert len(ranked) == 2 * 64  # every MLP unit of both layers


def test_pruning_zero_units_changes_nothing():
    base, tuned = constructed_pair()
    tokenizer = tiny_tokenizer()
    texts, _ = digit_texts(20)
    before = behaviour.kl_to_base(tuned, base, tokenizer, texts)
    with wrapper_units.pruned(tuned, []):
        assert behaviour.kl_to_base(tuned, base, tokenizer, texts) == before
    assert before > 1e-4  # the wrapper does change the behaviour


@pytest.mark.parametrize("mode", ["zero", "revert"])
def test_pruning_the_planted_wrapper_restores_the_base_and_the_weights_come_back(mode):
    base, tuned = constructed_pair()
    tokenizer = tiny_tokenizer()
    texts, _ = digit_texts(20)
    saved = state(tuned)
    wrapper = wrapper_units.rank_units(base, tuned)[:5]
    with wrapper_units.pruned(tuned, wrapper, mode, base):
        assert behaviour.kl_to_base(tuned, base, tokenizer, texts) < 1e-10
        assert behaviour.lm_loss(tuned, tokenizer, texts) == pytest.approx(behaviour.lm_loss(base, tokenizer, texts),
                                                                         abs=1e-6)
    with wrapper_units.pruned(tuned, wrapper[:2], mode, base):  # part of the wrapper: part of the change stays
        assert behaviour.kl_to_base(tuned, base, tokenizer, texts) > 1e-6
    assert same_state(tuned, saved)


def test_reverting_every_changed_unit_of_a_real_finetune_gives_back_the_base_mlps():
    base = tiny_llama(seed=0)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if ".mlp." in name:
                p.add_(0.01 * torch.randn_like(p))
    ranked = wrapper_units.rank_units(base, tuned)
    with wrapper_units.pruned(tuned, ranked, "revert", base):
        assert all(torch.equal(p, base.get_parameter(n)) for n, p in tuned.named_parameters())
    assert not torch.equal(tuned.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)


def test_a_model_without_a_recognised_mlp_is_refused_by_name():
    with pytest.raises(FtpluginsError, match="Linear has no MLP"):
        wrapper_units.find_mlps(torch.nn.Linear(4, 4))


# --- the whole analysis ------------------------------------------------------------------------------------------


def test_the_analysis_reports_the_wrapper_and_reverse_runs_and_leaves_both_models_unchanged(tmp_path):
    base, tuned = constructed_pair()
    tokenizer = tiny_tokenizer()
    texts, labels = digit_texts(40)
    saved_base, saved_tuned = state(base), state(tuned)
    report = probe_prune.analyze(base, tuned, tokenizer, texts, labels, units=[0, 2, 5], reverse_steps=3,
                                 backend="torch")
    assert same_state(base, saved_base) and same_state(tuned, saved_tuned)
    assert set(report.probes) == {"base", "tuned", "pruned_0", "pruned_2", "pruned_5"} and report.layers == 2
    assert report.behaviour["pruned_0"] == report.behaviour["tuned"]
    assert report.behaviour["pruned_5"]["kl_to_base"] < 1e-10 < report.behaviour["tuned"]["kl_to_base"]
    assert report.probes["pruned_5"] == report.probes["base"]  # the same hidden states, the same probes
    assert report.pruning["change_share"]["5"] == pytest.approx(1.0)
    assert {(u["mlp"], u["index"]) for u in report.wrapper} == {(n, j) for n, us in PLANTED.items() for j in us}
    assert len(report.reverse["tuned"]["loss"]) == len(report.reverse["control"]["loss"]) == 4
    assert report.reverse["tuned"]["loss"][0] == pytest.approx(report.behaviour["tuned"]["loss"])  # an exact copy
    assert report.reverse["control"]["loss"][0] != report.reverse["tuned"]["loss"][0]  # the control: a fresh init
    written = probe_prune.write_report(report, str(tmp_path / "pp.json"))
    assert json.loads((tmp_path / "pp.json").read_text())["pruning"]["units"] == [0, 2, 5]
    assert (tmp_path / "pp.png").stat().st_size > 0 and len(written) == 2
    assert not (tmp_path / ".ftplugins-staging").exists() or not any((tmp_path / ".ftplugins-staging").iterdir())


def test_reverse_finetuning_trains_a_copy_and_reports_the_first_recovered_step():
    model, tokenizer = tiny_llama(seed=0), tiny_tokenizer()
    saved = state(model)
    texts, _ = digit_texts(16)
    run = reverse_ft.reverse_finetune(model, tokenizer, texts, texts, steps=4, threshold=float("inf"))
    assert run.recovered_at == 0 and len(run.losses) == 5
    run = reverse_ft.reverse_finetune(model, tokenizer, texts, texts, steps=4, threshold=-1.0, learning_rate=1e-2)
    assert run.recovered_at is None and run.losses[-1] < run.losses[0]  # it trains, on the copy
    assert same_state(model, saved)


def test_bad_inputs_are_one_clear_line():
    base, tuned = constructed_pair()
    tokenizer = tiny_tokenizer()
    texts, labels = digit_texts(20)
    with pytest.raises(FtpluginsError, match="at least two labels"):
        probe_prune.analyze(base, tuned, tokenizer, texts, ["same"] * 20)
    with pytest.raises(FtpluginsError, match="20 texts but 3 labels"):
        probe_prune.analyze(base, tuned, tokenizer, texts, labels[:3])
    with pytest.raises(FtpluginsError, match="has 128 MLP units"):
        probe_prune.analyze(base, tuned, tokenizer, texts, labels, units=[500])
    with pytest.raises(FtpluginsError, match="mode 'cut'"):
        with wrapper_units.pruned(tuned, [], "cut"):
            pass
    with pytest.raises(FtpluginsError, match="probe backend 'svm'"):
        probing.resolve_backend("svm")
    other = tiny_llama(seed=0, intermediate_size=48)
    with pytest.raises(FtpluginsError, match="compare a fine-tune with its base"):
        wrapper_units.rank_units(other, tuned)


# --- the command ---------------------------------------------------------------------------------------------------


def write_rows(path, texts, labels):
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return str(path)


def test_the_command_reports_a_model_pair_and_an_adapter(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from ftplugins.cli import main as cli_main

    base, tuned = constructed_pair()
    tokenizer = tiny_tokenizer()
    for model, folder in ((base, "base"), (tuned, "tuned")):
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    data = write_rows(tmp_path / "rows.jsonl", *digit_texts(24))
    cli_main(["analyze", "probe-prune", str(tmp_path / "base"), str(tmp_path / "tuned"), "--data", data,
              "--units", "5", "--probe", "torch", "-o", str(tmp_path / "out" / "pp.json")])
    report = json.loads((tmp_path / "out" / "pp.json").read_text())
    assert report["behaviour"]["pruned_5"]["kl_to_base"] < 1e-10 < report["behaviour"]["tuned"]["kl_to_base"]
    assert (tmp_path / "out" / "pp.png").exists() and "wrote" in capsys.readouterr().out

    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["up_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    cli_main(["analyze", "probe-prune", str(tmp_path / "base"), str(tmp_path / "adapter"), "--data", data,
              "--units", "0", "--probe", "torch", "-o", str(tmp_path / "adapter.json")])
    report = json.loads((tmp_path / "adapter.json").read_text())
    assert set(report["behaviour"]) == {"base", "tuned"} and report["behaviour"]["tuned"]["kl_to_base"] > 0
    assert report["wrapper"] == [] and report["pruning"]["total_change"] > 0  # the merged LoRA moved up_proj rows


def test_the_command_names_a_missing_column(tmp_path):
    from ftplugins.cli import main as cli_main

    (tmp_path / "rows.jsonl").write_text('{"text": "Q: 1+2"}\n')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["analyze", "probe-prune", str(tmp_path), str(tmp_path), "--data", str(tmp_path / "rows.jsonl")])
    assert exit_info.value.code not in (0, None)


# --- the plugin --------------------------------------------------------------------------------------------------


def train(tmp_path, peft_config=None, **options):
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.testing import arithmetic_dataset
    from ftplugins.tools.probe_prune_plugin import plugin

    options.setdefault("probe_prune_data", write_rows(tmp_path / "rows.jsonl", *digit_texts(24)))
    cls = ftplugins.compose(SFTTrainer, [plugin], probe_prune_probe="torch", **options)
    trainer = cls(model=tiny_llama(seed=0), args=cpu_args(SFTConfig, tmp_path / "run", max_steps=3, learning_rate=5e-2),
                  train_dataset=arithmetic_dataset(16), processing_class=tiny_tokenizer(), peft_config=peft_config)
    trainer.train()
    return trainer


def test_the_plugin_compares_the_initial_weights_with_the_trained_model(tmp_path):
    trainer = train(tmp_path, probe_prune_units="2,8", probe_prune_every=2, probe_prune_reverse_steps=2)
    report = json.loads((tmp_path / "run" / "probe_prune.json").read_text())
    tokenizer, texts = tiny_tokenizer(), digit_texts(24)[0]
    _, test = probing.split_indices(24, 0.3, 0)
    held_out = [texts[i] for i in test.tolist()]
    expected_base = behaviour.lm_loss(tiny_llama(seed=0), tokenizer, held_out)  # the model before training
    assert report["behaviour"]["base"]["loss"] == pytest.approx(expected_base, abs=1e-6)
    assert report["behaviour"]["tuned"]["loss"] == pytest.approx(behaviour.lm_loss(trainer.model, tokenizer, held_out),
                                                                abs=1e-6)
    assert report["behaviour"]["tuned"]["kl_to_base"] > 0 and set(report["probes"]) >= {"pruned_2", "pruned_8"}
    assert len(report["reverse"]["tuned"]["loss"]) == 3 and (tmp_path / "run" / "probe_prune.png").exists()
    logs = trainer.state.log_history
    assert [e["step"] for e in logs if "probe_prune/layer_0" in e] == [2]
    assert any("probe_prune/tuned_best_probe" in e for e in logs)


def test_the_plugin_on_a_lora_run_prunes_the_merged_units_and_leaves_the_adapter_alone(tmp_path):
    from peft import LoraConfig

    trainer = train(tmp_path, LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj", "down_proj"]),
                    probe_prune_units="4")
    report = json.loads((tmp_path / "run" / "probe_prune.json").read_text())
    assert report["behaviour"]["tuned"]["kl_to_base"] > 0
    assert hasattr(trainer.model, "peft_config")  # the run's model is still the adapter model (a copy was merged)
    assert len(report["wrapper"]) == 4 and report["wrapper"][0]["change"] > 0


def test_plugin_options_and_data_are_checked(tmp_path):
    import ftplugins
    from trl import SFTTrainer

    from ftplugins.tools.probe_prune_plugin import plugin

    with pytest.raises(FtpluginsError, match="probe_prune_mode"):
        ftplugins.compose(SFTTrainer, [plugin], probe_prune_mode="cut")
    with pytest.raises(FtpluginsError, match="set --probe_prune_data"):
        train(tmp_path, probe_prune_data="")
    with pytest.raises(FtpluginsError, match="at least two labels"):
        train(tmp_path, probe_prune_data=write_rows(tmp_path / "one.jsonl", ["a b", "c d"], ["x", "x"]))
