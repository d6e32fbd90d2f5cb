"""LP-FT: the head trains alone until the switch step, then everything the run trains; resume crosses the switch."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.lp_ft import plugin
from ftplugins.testing import StopAt, arithmetic_dataset, tiny_llama, tiny_tokenizer

from test_levi import reviews  # noqa: F401  (shared data)
from test_mean_teacher import tokenizer  # noqa: F401  (a shared fixture)


class Snapshots:
    """Weights after each optimizer step, as a callback (a factory, so transformers' import stays inside tests)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Recorder(TrainerCallback):
            def __init__(self):
                self.at = {}

            def on_step_end(self, args, state, control, model=None, **kwargs):
                self.at[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

        return Recorder()


def classifier_run(tmp_path, tokenizer, model=None, steps=4, callbacks=(), schedule="constant", **options):
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import minilm_classifier

    torch.manual_seed(0)
    model = model if model is not None else minilm_classifier(num_labels=2)
    cls = ftplugins.compose(Trainer, [plugin], **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=steps,
                             per_device_train_batch_size=4, learning_rate=1e-3, lr_scheduler_type=schedule,
                             save_strategy="no", disable_tqdm=True, seed=0)
    trainer = cls(model=model, args=args, train_dataset=reviews(tokenizer), processing_class=tokenizer,
                  callbacks=list(callbacks))
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer, initial


def changed(before, after):
    return {n for n in before if not torch.equal(before[n], after[n])}


def test_only_the_head_changes_while_probing_then_the_whole_classifier_trains(tmp_path, tokenizer):
    seen = Snapshots()
    trainer, initial = classifier_run(tmp_path, tokenizer, callbacks=[seen], lp_ft_probe_steps=2)
    head = {n for n in initial if n.startswith("classifier.")}
    assert head and changed(initial, seen.at[1]) == head and changed(initial, seen.at[2]) == head
    body_moved = changed(seen.at[2], seen.at[4]) - head
    assert any(n.startswith("bert.encoder.") for n in body_moved)
    assert all(p.requires_grad for p in trainer.model.parameters()), "the body stays frozen after training"


def test_fine_tuning_starts_from_the_probed_head(tmp_path, tokenizer):
    """The LP-FT run at the switch equals a run that only probes for as many steps: same head, untouched body."""
    seen = Snapshots()
    classifier_run(tmp_path / "lpft", tokenizer, callbacks=[seen], lp_ft_probe_steps=2)
    probe, initial = classifier_run(tmp_path / "lp", tokenizer, steps=2, lp_ft_probe_ratio=1.0)
    probed = dict(probe.model.named_parameters())
    assert changed(initial, probed) == {n for n in initial if n.startswith("classifier.")}
    for name, value in seen.at[2].items():
        torch.testing.assert_close(value, probed[name].detach(), rtol=0, atol=1e-6, msg=name)


def test_probing_steps_take_their_own_rate_and_fine_tuning_the_schedule(tmp_path, tokenizer):
    """Adam's first step moves every entry by about its learning rate (m/sqrt(v) = sign(g)): the head's first
    step by lp_ft_probe_lr, the body's first step (after the switch) by the run's rate."""
    seen = Snapshots()
    _, initial = classifier_run(tmp_path, tokenizer, steps=2, callbacks=[seen], lp_ft_probe_steps=1,
                                      lp_ft_probe_lr=0.05)
    head_step = max(float((seen.at[1][n] - initial[n]).abs().max()) for n in initial if n.startswith("classifier."))
    body_step = float((seen.at[2]["bert.encoder.layer.0.attention.self.query.weight"]
                       - initial["bert.encoder.layer.0.attention.self.query.weight"]).abs().max())
    assert head_step == pytest.approx(0.05, rel=1e-3) and body_step == pytest.approx(1e-3, rel=1e-3)


def test_with_a_lora_adapter_phase_two_trains_the_adapter_and_the_base_stays(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    from ftplugins.testing import minilm_classifier

    torch.manual_seed(0)
    model = get_peft_model(minilm_classifier(num_labels=2),
                           LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    seen = Snapshots()
    _, initial = classifier_run(tmp_path, tokenizer, model=model, callbacks=[seen], lp_ft_probe_ratio=0.5)
    saved_head = {n for n in initial if ".classifier.modules_to_save." in n}
    assert saved_head and changed(initial, seen.at[2]) == saved_head
    later = changed(seen.at[2], seen.at[4])
    assert any("lora_B" in n for n in later) and later <= {n for n in initial if "lora_" in n or n in saved_head}


def sft_run(output_dir, stop_at=None, resume=False, options=None, **overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [plugin], **{"lp_ft_probe_steps": 2, **(options or {})})
    args = cpu_args(SFTConfig, output_dir, **{**dict(max_steps=4, save_strategy="steps", save_steps=1,
                                                       learning_rate=3e-2, per_device_train_batch_size=4), **overrides})
    seen = Snapshots()
    trainer = cls(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(32),
                  processing_class=tiny_tokenizer(), callbacks=[seen] + ([StopAt(stop_at)] if stop_at else []))
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer, initial, seen


def test_sft_probes_the_lm_head_first(tmp_path):
    _, initial, seen = sft_run(tmp_path, save_strategy="no")
    assert changed(initial, seen.at[2]) == {"lm_head.weight"}
    assert any(n.startswith("model.layers.") for n in changed(seen.at[2], seen.at[4]))


@pytest.mark.parametrize("stop_at", [1, 3], ids=["checkpoint-while-probing", "checkpoint-after-switch"])
def test_resume_across_the_switch_equals_an_uninterrupted_run(tmp_path, stop_at):
    straight, initial, _ = sft_run(tmp_path / "straight", save_strategy="no")
    stopped, _, _ = sft_run(tmp_path / "resumed", stop_at=stop_at)
    assert stopped.state.global_step == stop_at and os.path.isdir(tmp_path / "resumed" / f"checkpoint-{stop_at}")
    resumed, _, _ = sft_run(tmp_path / "resumed", resume=True)
    assert resumed.state.global_step == 4
    expected = dict(straight.model.named_parameters())
    assert any(n.startswith("model.layers.") for n in changed(initial, expected))
    for name, value in resumed.model.named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("restart", [False, True], ids=["one-schedule", "schedule-restarts"])
def test_the_first_fine_tuning_step_takes_the_schedule_from_its_start_when_it_restarts(tmp_path, tokenizer, restart):
    """A linear schedule over 6 steps with 2 probing steps: the first fine-tuning step (Adam: every entry moves by
    about its rate) runs at the full rate when the schedule restarts at the switch (a 4-step run's first step), and
    at 4/6 of it when one schedule spans both phases."""
    seen = Snapshots()
    _, initial = classifier_run(tmp_path, tokenizer, steps=6, callbacks=[seen], schedule="linear",
                                lp_ft_probe_steps=2, lp_ft_probe_lr=0.05, lp_ft_restart_schedule=restart)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(seen.at[2][name], initial[name])
    body_step = float((seen.at[3][name] - initial[name]).abs().max())
    assert body_step == pytest.approx(1e-3 if restart else 1e-3 * 4 / 6, rel=1e-3)


def test_resume_after_the_switch_with_a_restarted_schedule_equals_an_uninterrupted_run(tmp_path):
    """The restarted schedule lives in plain functions rebuilt at every start: a run resumed after the switch
    continues on it (its checkpointed scheduler state holds only the step)."""
    options = dict(lp_ft_probe_lr=3e-2, lp_ft_restart_schedule=True)
    straight, initial, _ = sft_run(tmp_path / "straight", save_strategy="no", options=options,
                                   lr_scheduler_type="linear")
    sft_run(tmp_path / "resumed", stop_at=3, options=options, lr_scheduler_type="linear")
    resumed, _, _ = sft_run(tmp_path / "resumed", resume=True, options=options, lr_scheduler_type="linear")
    expected = dict(straight.model.named_parameters())
    assert resumed.state.global_step == 4 and any(n.startswith("model.layers.") for n in changed(initial, expected))
    for name, value in resumed.model.named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    one_schedule, _, _ = sft_run(tmp_path / "one", save_strategy="no", options={"lp_ft_probe_lr": 3e-2},
                                 lr_scheduler_type="linear")
    assert changed(dict(one_schedule.model.named_parameters()), expected)  # the restart changed the run


@pytest.mark.parametrize("key,value", [("lp_ft_probe_ratio", 0.0), ("lp_ft_probe_ratio", 1.5),
                                       ("lp_ft_probe_steps", -1), ("lp_ft_head", [""]),
                                       ("lp_ft_probe_lr", -0.1), ("lp_ft_restart_schedule", True)])
def test_bad_options_name_the_option(key, value):
    from transformers import Trainer

    with pytest.raises(OptionError, match=key) as err:
        ftplugins.compose(Trainer, [plugin], **{key: value})
    assert "\n" not in str(err.value)


def test_a_missing_head_is_named_with_the_fix(tmp_path, tokenizer):
    with pytest.raises(FtpluginsError, match=r"lp_ft: BertForSequenceClassification has no head \(modules named "
                       r"pooler_head\).*--lp_ft_head NAME"):
        classifier_run(tmp_path, tokenizer, lp_ft_head=["pooler_head"])


def test_an_adapter_without_the_head_is_refused_naming_modules_to_save(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    from ftplugins.testing import minilm_classifier

    model = get_peft_model(minilm_classifier(num_labels=2), LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(FtpluginsError, match=r"does not train.*modules_to_save=\['classifier'\]"):
        classifier_run(tmp_path, tokenizer, model=model)


def test_more_probe_steps_than_the_run_has_is_refused(tmp_path, tokenizer):
    with pytest.raises(FtpluginsError, match=r"--lp_ft_probe_steps 9: the run has only 4 optimizer steps"):
        classifier_run(tmp_path, tokenizer, lp_ft_probe_steps=9)
