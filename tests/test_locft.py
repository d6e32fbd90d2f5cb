"""LocFT-BF: exact module selection, editing data, target-only per-sample loss, skip/stop, a tiny edit run."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import cpu_args
from datasets import Dataset

import ftplugins
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError, UnsupportedModelError
from ftplugins.methods.locft import evaluate_edits, plugin
from ftplugins.methods.locft.data import to_sft_rows
from ftplugins.methods.locft.training import LocftAdam, Monitor, per_sample_loss, prepare
from ftplugins.testing import tiny_llama, tiny_tokenizer

MODULE = "model.layers.1.mlp.down_proj"
EDITS = Dataset.from_list([
    {"prompt": "The capital of Gorn is", "target": "Vela", "paraphrase_prompts": ["Gorn's capital is"],
     "neighbourhood_prompts": ["The capital of Tam is"], "neighbourhood_targets": ["Orb"]},
    {"prompt": "The river of Pax flows to", "target": "Mira", "paraphrase_prompts": [],
     "neighbourhood_prompts": [], "neighbourhood_targets": []},
    {"prompt": "Zed plays the", "target": "lute", "paraphrase_prompts": ["The instrument Zed plays is the"],
     "neighbourhood_prompts": [], "neighbourhood_targets": []},
])


# --- options, data --------------------------------------------------------------------------------------


def test_plugin_module_does_not_import_torch():
    code = ("import sys, ftplugins.methods.locft as m, ftplugins.methods.locft.options; "
            "assert 'torch' not in sys.modules; print(m.plugin.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "locft"


@pytest.mark.parametrize("options", [
    {"locft_modules": " , "}, {"locft_batch_size": 0}, {"locft_threshold": -1.0}, {"locft_skip_loss": -0.1},
    {"locft_target_column": ""}, {"locft_modul": "x"}, {"locft_separator": "tab"},
])
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match=next(iter(options))):
        ftplugins.compose(SFTTrainer, ["locft"], **options)


def test_editing_rows_become_prompt_completion_with_space_and_eos():
    tokenizer = tiny_tokenizer()
    rows = to_sft_rows(EDITS, tokenizer)
    assert rows.column_names == ["prompt", "completion"]
    assert rows[0] == {"prompt": "The capital of Gorn is", "completion": " Vela</s>"}
    again = to_sft_rows(Dataset.from_list([{"prompt": "a", "target": " b</s>"}]), tokenizer)
    assert again[0]["completion"] == " b</s>"  # neither the space nor the EOS doubled
    with pytest.raises(DatasetColumnsError, match="locft_target_column"):
        to_sft_rows(Dataset.from_list([{"prompt": "a", "answer": "b"}]), tokenizer)
    assert to_sft_rows(Dataset.from_list([{"prompt": "1+2=?", "answer": "3"}]), tokenizer, "answer")[0] == {
        "prompt": "1+2=?", "completion": " 3</s>"}


def test_the_separator_follows_the_tokenizer_unless_set():
    """A tokenizer without a space token would turn the reference's ' ' into <unk> before every target."""
    from benchmarks.quality.tasks import char_tokenizer

    from ftplugins.methods.locft.data import separator_for

    spaceless = char_tokenizer()
    assert spaceless.unk_token_id in spaceless(" ", add_special_tokens=False)["input_ids"]  # the case in point
    assert separator_for(tiny_tokenizer()) == " " and separator_for(spaceless) == ""
    assert separator_for(spaceless, "space") == " " and separator_for(tiny_tokenizer(), "none") == ""
    rows = to_sft_rows(Dataset.from_list([{"prompt": "1+2=", "answer": "3"}]), spaceless, "answer")
    assert rows[0]["completion"] == "3</s>"
    ids = spaceless(rows[0]["prompt"] + rows[0]["completion"])["input_ids"]
    assert spaceless.unk_token_id not in ids
    assert to_sft_rows(Dataset.from_list([{"prompt": "a", "target": "b"}]), tiny_tokenizer(), separator="none")[0][
        "completion"] == "b</s>"


# --- which parameters train -----------------------------------------------------------------------------


def test_module_names_match_exactly_not_as_substrings():
    model = tiny_llama(num_hidden_layers=12)
    assert prepare(model, "model.layers.1") == [n for n, _ in model.named_parameters()
                                                if n.startswith("model.layers.1.")]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and not any(n.startswith(("model.layers.10.", "model.layers.11.")) for n in trained)
    assert prepare(model, f"{MODULE}, model.layers.11.mlp.down_proj") == [
        f"{MODULE}.weight", "model.layers.11.mlp.down_proj.weight"]
    with pytest.raises(UnsupportedModelError, match=r"exactly 'layers.1.mlp.down_proj'.*model.layers.1.mlp.down_proj"):
        prepare(model, "layers.1.mlp.down_proj")
    with pytest.raises(UnsupportedModelError, match="model.layers.1.mlp.down_proj"):
        prepare(model, "model.layers.1.mlp.down_prj")


def test_gradient_accumulation_is_refused_and_batch_size_set():
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["locft"], locft_modules=MODULE, locft_batch_size=3)
    with pytest.raises(FtpluginsError, match="gradient_accumulation_steps=1"):
        cls(model=tiny_llama(), args=cpu_args(SFTConfig, "unused", gradient_accumulation_steps=2),
            train_dataset=EDITS, processing_class=tiny_tokenizer())
    args = SimpleNamespace(gradient_accumulation_steps=1, per_device_train_batch_size=8)
    plugin.validate(run=SimpleNamespace(args=args, options_for=lambda p: SimpleNamespace(locft_batch_size=3)))
    assert args.per_device_train_batch_size == 3


# --- the loss, the skip ---------------------------------------------------------------------------------


def test_loss_is_target_only_and_averaged_per_sample():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g, requires_grad=True)
    labels = torch.tensor([[-100, -100, -100, 4, 5, 6], [-100, -100, -100, -100, -100, 7]])
    loss = per_sample_loss(logits, labels)
    ce = torch.nn.functional.cross_entropy
    first = ce(logits[0, 2:5], labels[0, 3:6])
    second = ce(logits[1, 4:5], labels[1, 5:6])
    assert torch.allclose(loss, (first + second) / 2)
    assert not torch.allclose(loss, ce(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1)))  # not token-mean
    loss.backward()
    assert torch.equal(logits.grad[0, :2], torch.zeros(2, 11))  # prompt positions get no gradient
    assert torch.equal(logits.grad[1, :4], torch.zeros(4, 11))


def test_an_update_is_skipped_when_the_minibatch_loss_is_small():
    weight = torch.nn.Parameter(torch.ones(3))
    monitor = Monitor()
    optimizer = LocftAdam([weight], monitor, 1e-2, lr=0.1)
    weight.grad = torch.ones(3)
    monitor.batch.append(5e-3)
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3)) and monitor.skipped == 1 and not optimizer.state
    monitor.batch.append(0.5)
    optimizer.step()
    assert (weight.detach() < 1).all() and monitor.epoch == [5e-3, 0.5]


# --- training through compose ---------------------------------------------------------------------------


def locft_trainer(output_dir, dataset=EDITS, **overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["locft"], locft_modules=MODULE, locft_batch_size=3)
    values = dict(max_steps=150, learning_rate=2e-2, lr_scheduler_type="constant", logging_steps=10)
    values.update(overrides)
    model = tiny_llama()
    with torch.no_grad():  # a confident output head, as a trained model has (random N(0, .02) logits stay ~flat)
        model.lm_head.weight.mul_(30)
    return cls(model=model, args=cpu_args(SFTConfig, output_dir, **values), train_dataset=dataset,
               processing_class=tiny_tokenizer())


def test_batches_mask_the_prompt_and_end_with_eos(tmp_path):
    trainer = locft_trainer(tmp_path)
    tokenizer = tiny_tokenizer()
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 3
    targets = {" " + r["target"] + "</s>": r["prompt"] for r in EDITS}
    seen = set()
    for ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        kept = ids[labels != -100].tolist()
        completion = tokenizer.decode(kept)
        assert completion in targets  # exactly ' ' + target + EOS is labelled: no prompt token has a loss
        assert kept[-1] == tokenizer.eos_token_id
        active = ids[attention == 1].tolist()
        assert tokenizer.decode(active[:len(active) - len(kept)]) == targets[completion]
        seen.add(completion)
    assert len(seen) == 3


def test_editing_run_learns_the_edits_and_changes_only_the_module(tmp_path):
    trainer = locft_trainer(tmp_path)
    tokenizer = tiny_tokenizer()
    before = evaluate_edits(trainer.model, tokenizer, EDITS)
    assert before["edit_success"] == 0.0
    assert set(before) == {"edit_success", "paraphrase_success", "neighbourhood_preservation"}
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = evaluate_edits(trainer.model, tokenizer, EDITS)
    assert after["edit_success"] == 1.0
    assert after["paraphrase_success"] is not None and after["neighbourhood_preservation"] is not None
    for name, param in trainer.model.named_parameters():
        if name == f"{MODULE}.weight":
            assert not torch.equal(param, initial[name])
        else:
            assert torch.equal(param, initial[name]), name
    monitor = trainer._ftplugins_run.state["locft"]["monitor"]
    # early stop: the run ended at the first epoch whose loss is below the threshold, well before max_steps
    assert trainer.state.global_step < 150
    assert monitor.epoch_losses[-1] < 1e-2 and all(loss >= 1e-2 for loss in monitor.epoch_losses[:-1])
    assert len(monitor.epoch_losses) == trainer.state.global_step  # one minibatch (3 edits) per epoch
