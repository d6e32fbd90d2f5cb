"""HFT: the per-layer draw, freezing, the optimizer's parameters, per-epoch redraw, training via compose."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import cpu_args
from transformers import TrainerCallback

import ftplugins
from ftplugins.errors import OptionError, UnsupportedModelError
from ftplugins.methods.hft import plugin, select
from ftplugins.methods.hft.selection import ATTENTION, FFN, NORMS
from ftplugins.testing import StopAt, arithmetic_dataset, tiny_llama, tiny_tokenizer


def frozen_modules(trainable: dict[str, bool], layer: int) -> dict[str, set[str]]:
    prefix = f"model.layers.{layer}."
    off = {n[len(prefix):].rsplit(".", 1)[0] for n, t in trainable.items() if n.startswith(prefix) and not t}
    return {"attn": off & set(ATTENTION), "ffn": off & set(FFN), "norm": off & set(NORMS)}


@pytest.mark.parametrize("layers", [2, 4, 5])
def test_per_layer_counts_are_exact(layers):
    model = tiny_llama(num_hidden_layers=layers)
    halves = set()
    for seed in range(6):
        trainable = select(model, seed)
        ffn_two = 0
        for layer in range(layers):
            off = frozen_modules(trainable, layer)
            assert len(off["attn"]) == 2 and len(off["norm"]) == 1
            assert len(off["ffn"]) in (1, 2)
            ffn_two += len(off["ffn"]) == 2
            # every frozen name is a whole module (weight + bias follow the module), nothing else in the layer
            prefix = f"model.layers.{layer}."
            layer_off = {n for n, t in trainable.items() if n.startswith(prefix) and not t}
            assert len(layer_off) == len(off["attn"]) + len(off["ffn"]) + len(off["norm"])
        assert ffn_two == layers // 2  # a random half of the layers freeze 2 FFN modules, the rest 1
        halves.add(frozenset(i for i in range(layers) if len(frozen_modules(trainable, i)["ffn"]) == 2))
        others = [n for n in trainable if not n.startswith("model.layers.")]
        assert others == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
        assert all(trainable[n] for n in others)  # embeddings, final norm, head train
    assert len(halves) > 1  # which half freezes 2 FFN modules is drawn too


def test_reproducible_from_the_seed_and_different_across_seeds():
    model = tiny_llama(num_hidden_layers=4)
    before = torch.random.get_rng_state()
    a = select(model, 3)
    assert torch.equal(torch.random.get_rng_state(), before)  # private generator
    assert a == select(model, 3) == select(tiny_llama(num_hidden_layers=4, seed=9), 3)
    draws = {tuple(sorted(select(model, s).items())) for s in range(6)}
    assert len(draws) == 6


def test_unsupported_models_and_bad_options_are_refused():
    with pytest.raises(UnsupportedModelError, match="q_proj"):
        select(torch.nn.Sequential(torch.nn.Linear(3, 3)), 0)
    from trl import SFTTrainer

    for options in ({"hft_redraw": "step"}, {"hft_seed": -2}, {"hft_sede": 1}):
        with pytest.raises(OptionError, match=next(iter(options))):
            ftplugins.compose(SFTTrainer, ["hft"], **options)


def test_plugin_module_does_not_import_torch_and_options_parse():
    code = ("import sys, ftplugins.methods.hft as m, ftplugins.methods.hft.options; "
            "assert 'torch' not in sys.modules; print(m.plugin.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    from transformers import HfArgumentParser

    from ftplugins.methods.hft.options import HftOptions

    (opts,) = HfArgumentParser(HftOptions).parse_args_into_dataclasses(["--hft_seed", "7", "--hft_redraw", "epoch"])
    assert opts == HftOptions(hft_seed=7, hft_redraw="epoch")


class Record(TrainerCallback):
    def __init__(self):
        self.sets = []

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        names = {id(p): n for n, p in model.named_parameters()}
        self.sets.append((state.epoch, {names[id(p)] for p in params}))


def hft_train(output_dir, options=None, resume=False, stop_at=None, **overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["hft"], **(options or {}))
    values = dict(max_steps=3, learning_rate=5e-2, weight_decay=0.1, per_device_train_batch_size=4)
    values.update(overrides)
    record = Record()
    model = tiny_llama(num_hidden_layers=4)
    trainer = cls(model=model, args=cpu_args(SFTConfig, output_dir, **values), train_dataset=arithmetic_dataset(16),
                  processing_class=tiny_tokenizer(), callbacks=[record] + ([StopAt(stop_at)] if stop_at else []))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer, initial, record


def test_training_freezes_the_drawn_half_bitwise(tmp_path):
    trainer, initial, record = hft_train(tmp_path, seed=5)
    expected = select(trainer.model, 5)  # hft_seed -1: the trainer's seed
    assert trainer.ftplugins_run.state["hft"]["trainable"] == expected
    for name, param in trainer.model.named_parameters():
        if expected[name]:
            assert not torch.equal(param, initial[name]), name
        else:
            assert torch.equal(param, initial[name]), name  # frozen: bitwise unchanged
    trainable = {n for n, t in expected.items() if t}
    assert all(names == trainable for _, names in record.sets)  # the optimizer holds the trainable half only
    state_params = {id(p) for p in trainer.optimizer.optimizer.state} if hasattr(trainer.optimizer, "optimizer") \
        else {id(p) for p in trainer.optimizer.state}
    params = dict(trainer.model.named_parameters())
    assert state_params == {id(params[n]) for n in trainable}


def test_epoch_redraw_changes_the_set_between_epochs(tmp_path):
    # 16 examples / batch 4 = 4 steps an epoch; 3 epochs
    trainer, initial, record = hft_train(tmp_path, options={"hft_redraw": "epoch", "hft_seed": 11}, max_steps=-1,
                                         num_train_epochs=3)
    from ftplugins.methods.hft.selection import epoch_seed

    by_epoch = {}
    for epoch, names in record.sets:
        by_epoch.setdefault(int(epoch + 1e-6), []).append(names)
    assert sorted(by_epoch) == [0, 1, 2]
    model = trainer.model
    for epoch, sets in by_epoch.items():
        wanted = {n for n, t in select(model, epoch_seed(11, epoch)).items() if t}
        assert all(s == wanted for s in sets), epoch
    assert by_epoch[0][0] != by_epoch[1][0] != by_epoch[2][0]
    # tensors frozen in every epoch never moved
    always_off = set(initial) - set().union(*(s[0] for s in by_epoch.values()))
    assert always_off
    assert all(torch.equal(dict(model.named_parameters())[n], initial[n]) for n in always_off)
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    params = dict(model.named_parameters())
    assert {id(p) for p in optimizer.state} <= {id(params[n]) for n in by_epoch[2][0]}


def test_peft_models_are_refused():
    import peft

    from ftplugins.errors import FtpluginsError

    lora = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(FtpluginsError, match="PEFT adapter"):
        plugin.prepare_model(run=SimpleNamespace(state={}, options_for=lambda p: None), model=lora)


def test_epoch_redraw_resumes_like_the_uninterrupted_run(tmp_path):
    """Checkpoint at step 6 (mid epoch 1, 4 steps an epoch): the resumed run re-makes epoch 1's draw
    before loading the optimizer state, then re-draws at epoch 2 as the uninterrupted run."""
    common = dict(options={"hft_redraw": "epoch", "hft_seed": 11}, max_steps=-1, num_train_epochs=3,
                  save_strategy="steps", save_steps=6)
    straight, _, _ = hft_train(tmp_path / "straight", **common)
    hft_train(tmp_path / "resumed", stop_at=6, **common)
    resumed, _, _ = hft_train(tmp_path / "resumed", resume=True, **common)
    assert resumed.state.global_step == straight.state.global_step == 12
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_model_dir, data_dir, tmp_path):
    from test_distributed import single_vs_two_processes

    base, a, b = single_vs_two_processes(tmp_path, tiny_model_dir, f"{data_dir}/arithmetic", plugins=["hft"],
                                         learning_rate=5e-2, hft_seed=3)
    moved = {k for k in a if not torch.equal(a[k], base[k])}
    assert moved and moved != set(a)  # half of each block trained, the other half is bitwise the base
    assert moved == {k for k in b if not torch.equal(b[k], base[k])}  # both processes froze the same half
    for key in a:  # reduction order moves a rare Adam step by ~4e-5; a wrong half or batch moves it by ~lr = 5e-2
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4, msg=key)
