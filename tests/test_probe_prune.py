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
        texts.append(f"Q: {''.join(rng.choice(digits) for _ in range(3))}+{''.join(rng.choice(digits) for _ in range(2))}")
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
    theirs = LogisticRegression(C=1.0, max_iter=1000).fit(x_train.numpy(), labels[train].numpy()).predict(x_test.numpy())
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
