"""The plugin contract: every hook fires exactly once per run, in the documented order."""

from __future__ import annotations

import contextlib
import functools

import pytest
from conftest import ALL_HOOKS, RecordingPlugin, cpu_args

import ftplugins
from ftplugins import hookimpl, hookspecs
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin
from ftplugins.testing import arithmetic_dataset, preference_dataset, prompt_dataset, tiny_llama, tiny_tokenizer

DOCUMENTED_ORDER = [
    "trainer_mixins",
    "validate",
    "patch_before_model_load",
    "model_init_kwargs",
    "peft_config",
    "transform_dataset",
    "reward_funcs",
    "callbacks",
    "prepare_model",
    "data_collator",
    "phase",
    "train_begin",
    "dataset_columns",
    "create_optimizer",
    "skip_ddp_wrapper",
    "load_optimizer_state",
    "compute_loss",
    "grad_norm",
    "save_checkpoint",
    "post_train",
]


class TrainingRecorder(RecordingPlugin):
    """The recorder with the hooks a training run calls too; ``events`` also records phases' exits and details."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple] = []

    def _rec(self, hook, **info):
        super()._rec(hook)
        self.events.append((hook, *info.values()))

    @hookimpl
    def phase(self, run, trainer, phase):
        self._rec("phase", phase=phase)

        @contextlib.contextmanager
        def held():
            yield
            self.events.append(("phase exit", phase))

        return held()

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        self._rec("train_begin", resume=resume_from_checkpoint, optimizer=trainer.optimizer)

    @hookimpl
    def dataset_columns(self, run, trainer):
        self._rec("dataset_columns")
        return []

    @hookimpl
    def skip_ddp_wrapper(self, run, trainer):
        self._rec("skip_ddp_wrapper", has_optimizer=trainer.optimizer is not None)
        return False

    @hookimpl
    def load_optimizer_state(self, run, trainer, checkpoint):
        self._rec("load_optimizer_state", checkpoint=checkpoint)

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        self._rec("compute_loss", training=model.training)
        return inner()

    @hookimpl
    def grad_norm(self, run, trainer, model):
        self._rec("grad_norm")

    @hookimpl
    def save_checkpoint(self, run, trainer, checkpoint):
        import os

        self._rec("save_checkpoint", checkpoint=checkpoint, files=sorted(os.listdir(checkpoint)))


def expected_calls(trainer, resumed=False):
    """The documented order of a one-step run: load_optimizer_state only when resuming, save_checkpoint only when
    it saves one, dataset_columns only when the trainer drops unused columns (GRPO keeps them all)."""
    skip = {"load_optimizer_state"} - ({"load_optimizer_state"} if resumed else set())
    if trainer.args.save_strategy == "no":
        skip.add("save_checkpoint")
    if not trainer.args.remove_unused_columns:
        skip.add("dataset_columns")
    return [hook for hook in DOCUMENTED_ORDER if hook not in skip]


def test_hookspec_order_is_the_documented_order():
    assert hookspecs.ORDER == DOCUMENTED_ORDER
    for hook in DOCUMENTED_ORDER:
        assert f"{hook}``" in hookspecs.__doc__ or f"``{hook}``" in hookspecs.__doc__


def constant_reward(completions, **kwargs):
    return [1.0 for _ in completions]


def build(kind, recorder, tmp_path, eval_dataset=None, **overrides):
    """A trainer of ``kind`` with ``recorder``, set to one optimizer step of one micro-batch."""
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    tok = tiny_tokenizer()
    overrides = {"max_steps": 1, **overrides}
    if kind == "sft":
        cls = ftplugins.compose(SFTTrainer, [recorder])
        return cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, **overrides),
                   train_dataset=arithmetic_dataset(8), eval_dataset=eval_dataset, processing_class=tok)
    if kind == "dpo":
        cls = ftplugins.compose(DPOTrainer, [recorder])
        return cls(model=tiny_llama(), ref_model=tiny_llama(),
                   args=cpu_args(DPOConfig, tmp_path, max_length=64, **overrides),
                   train_dataset=preference_dataset(8), processing_class=tok)
    cls = ftplugins.compose(GRPOTrainer, [recorder])
    args = cpu_args(GRPOConfig, tmp_path, num_generations=2, max_completion_length=4, per_device_train_batch_size=2,
                    **overrides)
    return cls(model=tiny_llama(), reward_funcs=[constant_reward], args=args, train_dataset=prompt_dataset(4),
               processing_class=tok)


@pytest.mark.parametrize("kind", ["sft", "dpo", "grpo"])
def test_every_hook_fires_once_in_order(kind, tmp_path):
    recorder = TrainingRecorder()
    trainer = build(kind, recorder, tmp_path)
    trainer.train()
    assert recorder.calls == expected_calls(trainer)
    assert set(ALL_HOOKS) - set(recorder.calls) <= {"load_optimizer_state", "dataset_columns", "save_checkpoint"}
    assert trainer.ftplugins_run.plugins == [recorder]
    details = dict((event[0], event[1:]) for event in recorder.events)
    assert details["phase"] == ("train",) and recorder.events[-1] == ("phase exit", "train")  # around all of train()
    assert details["train_begin"] == (None, None)  # not resuming, no optimizer yet
    assert details["skip_ddp_wrapper"] == (True,)  # asked once the optimizer exists
    assert details["compute_loss"] == (True,)


def test_a_resumed_run_loads_the_optimizer_state_once_before_its_first_loss(tmp_path):
    first = build("sft", TrainingRecorder(), tmp_path, save_strategy="steps", save_steps=1)
    first.train()
    recorder = TrainingRecorder()
    trainer = build("sft", recorder, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train(resume_from_checkpoint=True)
    assert recorder.calls == expected_calls(trainer, resumed=True)
    loads = [e for e in recorder.events if e[0] == "load_optimizer_state"]
    assert loads == [("load_optimizer_state", str(tmp_path / "checkpoint-1"))]
    # the resolved checkpoint: `True` is turned into the last *whole* checkpoint before any hook sees it
    assert ("train_begin", str(tmp_path / "checkpoint-1"), None) in recorder.events
    # checkpoint-2 is handed over while it is written: staged, with the trainer's files, not sealed or in place yet
    (saved,) = [e for e in recorder.events if e[0] == "save_checkpoint"]
    assert saved[1].startswith(str(tmp_path / ".ftplugins-staging")) and saved[1].endswith("checkpoint-2")
    assert "trainer_state.json" in saved[2] and "ftplugins_checkpoint.json" not in saved[2]


def test_evaluate_and_predict_are_phases_whose_losses_are_hooked(tmp_path):
    recorder = TrainingRecorder()
    trainer = build("sft", recorder, tmp_path, eval_dataset=arithmetic_dataset(2, seed=1))
    recorder.events.clear()
    trainer.evaluate()
    assert recorder.events[0] == ("phase", "evaluate") and recorder.events[-1] == ("phase exit", "evaluate")
    assert ("compute_loss", False) in recorder.events
    recorder.events.clear()
    trainer.predict(trainer.eval_dataset)
    assert recorder.events[0] == ("phase", "predict") and recorder.events[-1] == ("phase exit", "predict")


def test_plugins_are_called_in_the_users_order(tmp_path):
    from conftest import RecordingPlugin
    from trl import SFTConfig, SFTTrainer

    seen = []

    class First(RecordingPlugin):
        name = "first"

        def _rec(self, hook, **info):
            seen.append((hook, self.name))

    class Second(First):
        name = "second"

    cls = ftplugins.compose(SFTTrainer, [First(), Second()])
    cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
        processing_class=tiny_tokenizer())
    validate = [name for hook, name in seen if hook == "validate"]
    assert validate == ["first", "second"]


def test_trace_logs_each_hook_call(recorder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTPLUGINS_TRACE", "1")
    build("sft", recorder, tmp_path)
    err = capsys.readouterr().err
    for hook in DOCUMENTED_ORDER[:10]:
        assert f"[ftplugins] {hook} -> recorder" in err


# Combine rules of the trainer-side hooks, with two plugins


class Tagged(Plugin):
    """A plugin without hooks, named per instance; tests add the hooks they probe."""

    summary = "probe"
    paper = "n/a"

    def __init__(self, name, log):
        self.name, self.log = name, log


def two(log, *classes):
    return [cls(name, log) for cls, name in zip(classes, ("first", "second"), strict=True)]


def sft_trainer(plugins, tmp_path, **overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, plugins)
    return cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, **overrides), train_dataset=arithmetic_dataset(8),
               processing_class=tiny_tokenizer())


def test_compute_loss_wraps_in_plugin_order_and_inner_takes_changed_arguments(tmp_path):
    log = []

    class Wrapping(Tagged):
        @hookimpl
        def compute_loss(self, run, inputs, inner):
            log.append(f"{self.name} in")
            result = inner(inputs={**inputs, "seen_by": [*inputs.get("seen_by", []), self.name]})
            log.append(f"{self.name} out")
            return result * 2

    from trl import SFTTrainer

    trainer = sft_trainer(two(log, Wrapping, Wrapping), tmp_path)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    original, seen = SFTTrainer.compute_loss, []

    def trainers_own(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        seen.append(inputs.pop("seen_by"))
        return original(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    SFTTrainer.compute_loss = trainers_own
    try:
        loss = trainer.compute_loss(trainer.model, dict(batch))
    finally:
        SFTTrainer.compute_loss = original
    assert log == ["first in", "second in", "second out", "first out"]
    assert seen == [["first", "second"]]
    own = original(trainer, trainer.model, dict(batch))
    assert float(loss.detach()) == pytest.approx(4 * float(own.detach()), rel=1e-6)


def test_a_compute_loss_returning_nothing_is_an_error_naming_the_plugin(tmp_path):
    class Forgets(Tagged):
        @hookimpl
        def compute_loss(self, run, inner):
            inner()

    trainer = sft_trainer([Forgets("forgetful", [])], tmp_path)
    with pytest.raises(FtpluginsError, match="plugin forgetful's `compute_loss` returned None; return inner()"):
        trainer.train()


def test_phase_contexts_enter_in_order_and_exit_in_reverse_also_on_errors(tmp_path):
    log = []

    class Holding(Tagged):
        @hookimpl
        def phase(self, run, phase):
            @contextlib.contextmanager
            def held():
                log.append(f"{self.name} enter {phase}")
                try:
                    yield
                finally:
                    log.append(f"{self.name} exit {phase}")

            return held()

    trainer = sft_trainer(two(log, Holding, Holding), tmp_path)
    trainer.train_dataset = None  # train() raises inside the phase
    with pytest.raises(ValueError):
        trainer.train()
    assert log == ["first enter train", "second enter train", "second exit train", "first exit train"]


def test_skip_ddp_wrapper_prepares_the_model_without_a_wrapper_when_any_plugin_says_so(tmp_path, monkeypatch):
    from accelerate import Accelerator

    modes = []
    original = Accelerator.prepare_model

    def spy(self, model, device_placement=None, evaluation_mode=False):
        modes.append(evaluation_mode)
        return original(self, model, device_placement=device_placement, evaluation_mode=evaluation_mode)

    monkeypatch.setattr(Accelerator, "prepare_model", spy)

    class No(Tagged):
        @hookimpl
        def skip_ddp_wrapper(self, run):
            return False

    class Yes(No):
        @hookimpl
        def skip_ddp_wrapper(self, run):
            return True

    sft_trainer(two([], No, No), tmp_path / "a", max_steps=1).train()
    sft_trainer(two([], No, Yes), tmp_path / "b", max_steps=1).train()
    assert modes == [False, True]


def test_a_grad_norm_answer_replaces_the_trainers_norm_and_clipping(tmp_path):
    class Norm(Tagged):
        @hookimpl
        def grad_norm(self, run):
            return 7.0

    for clip in (1.0, 0.0):  # with and without max_grad_norm: asked once per step either way
        trainer = sft_trainer([Norm("norm", [])], tmp_path / str(clip), max_steps=2, max_grad_norm=clip)
        trainer.train()
        assert [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h] == [7.0, 7.0]


def test_dataset_columns_are_kept_beside_the_trainers_own(tmp_path):
    class Keep(Tagged):
        @hookimpl
        def dataset_columns(self, run):
            return ["extra"]

    trainer = sft_trainer([Keep("keep", [])], tmp_path)
    trainer._set_signature_columns_if_needed()
    assert "extra" in trainer._signature_columns and "input_ids" in trainer._signature_columns


# Implementations Run.call could not honour are refused, not silently ignored


def test_a_functools_wraps_implementation_gets_its_wrapped_functions_arguments():
    seen = []

    def logged(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            seen.append(kwargs)
            return func(*args, **kwargs)

        return wrapper

    class Wrapped(Tagged):
        @hookimpl
        @logged
        def transform_dataset(self, run, dataset, split):
            return [*dataset, split]

    run = ftplugins.context.Run(plugins=[Wrapped("wrapped", [])], options={})
    assert run.call("transform_dataset", dataset=["row"], split="train") == ["row", "train"]
    assert sorted(seen[0]) == ["dataset", "run", "split"]


@pytest.mark.parametrize("option", ["wrapper", "hookwrapper", "tryfirst", "trylast"])
def test_hookimpl_options_run_call_cannot_honour_are_refused_at_registration(option):
    class Special(Tagged):
        def validate(self, run):
            yield

    Special.validate = hookimpl(**{option: True})(Special.validate)
    with pytest.raises(FtpluginsError, match=f"plugin special: @hookimpl\\({option}=True\\) on `validate`"):
        ftplugins.context.Run(plugins=[Special("special", [])], options={})


def test_an_implementation_taking_positional_args_is_refused():
    class Star(Tagged):
        @hookimpl
        def validate(self, *args):
            pass

    with pytest.raises(FtpluginsError, match="plugin star: `validate` takes positional-only or \\*args"):
        ftplugins.context.Run(plugins=[Star("star", [])], options={})


def test_a_given_optimizer_is_refused_when_a_plugin_builds_the_optimizer(tmp_path):
    import torch
    from trl import SFTConfig, SFTTrainer

    class Builds(Tagged):
        @hookimpl
        def create_optimizer(self, run, model, args):
            return torch.optim.SGD(model.parameters(), lr=0.1)

    model = tiny_llama()
    given = (torch.optim.SGD(model.parameters(), lr=0.1), None)
    cls = ftplugins.compose(SFTTrainer, [Builds("builder", [])])
    with pytest.raises(FtpluginsError, match="plugin\\(s\\) builder build the optimizer"):
        cls(model=model, args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
            processing_class=tiny_tokenizer(), optimizers=given)
    # a plugin whose hook answers None under its options says so (builds_optimizer): the user's optimizer is kept
    class Sometimes(Builds):
        def builds_optimizer(self, options):
            return False

    assert Builds("builder", []).builds_optimizer(None) and not Tagged("tagged", []).builds_optimizer(None)
    kept = ftplugins.compose(SFTTrainer, [Sometimes("sometimes", [])])(
        model=model, args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
        processing_class=tiny_tokenizer(), optimizers=given)
    assert kept.optimizer is given[0]
    # without such a plugin the user's optimizer is used
    plain = ftplugins.compose(SFTTrainer, [Tagged("tagged", [])])
    trainer = plain(model=model, args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
                    processing_class=tiny_tokenizer(), optimizers=given)
    assert trainer.optimizer is given[0]


def test_a_script_importing_the_trainer_at_its_top_level_runs_with_the_composed_class(tmp_path, monkeypatch):
    """ftplugins.train patches first, then imports the script it runs (not only TRL's call-time lookup)."""
    import sys

    from ftplugins.context import Run
    from ftplugins.patching import import_patched, plugins_active

    (tmp_path / "top_level_script.py").write_text("from trl import SFTTrainer\n\ndef main():\n    return SFTTrainer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import top_level_script  # imported before the patch, as the argument parsing does

    run = Run(plugins=[Tagged("tagged", [])], options={})
    with plugins_active(run, ["SFTTrainer"]) as composed:
        assert import_patched("top_level_script").main() is composed["SFTTrainer"]
    assert sys.modules["top_level_script"] is top_level_script  # nothing left behind
    assert top_level_script.main().__name__ == "SFTTrainer"
