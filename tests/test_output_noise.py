"""Commands print what the user needs: no false warnings of ours, no blank lines, each warning once under DDP."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
from conftest import cpu_args

import ftplugins
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

QUIET_ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")}



def build_sft(model, tmp_path):
    from trl import SFTConfig, SFTTrainer

    args = cpu_args(SFTConfig, tmp_path)
    args.model_init_kwargs = {"dtype": "float32"}  # what TRL's sft script always sets
    cls = ftplugins.compose(SFTTrainer, ["masked_thought"])
    return cls(model=model, args=args, train_dataset=arithmetic_dataset(4), processing_class=tiny_tokenizer())


def test_no_false_already_instantiated_warning_for_a_model_we_loaded(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        build_sft(tiny_model_dir, tmp_path)
    assert not [r for r in caplog.records if "already instantiated" in r.getMessage()]


def test_the_warning_stays_where_it_is_true(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        build_sft(tiny_llama(), tmp_path)  # the user built the model: model_init_kwargs really are ignored
    assert [r for r in caplog.records if "already instantiated" in r.getMessage()]


def test_the_tiny_tokenizer_trains_silently():
    code = "from ftplugins.testing import tiny_tokenizer; tiny_tokenizer()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_tiny_model_prints_one_line(tmp_path):
    """With the tiny base cached (built here first if this machine has none), ``tiny-model`` says one line."""
    from ftplugins.tiny_base import tiny_base

    tiny_base(log=lambda *_: None)
    proc = subprocess.run([sys.executable, "-m", "ftplugins.cli", "tiny-model", str(tmp_path / "m")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("saved the tiny pre-trained Llama") and lines[0].endswith(
        str(tmp_path / "m"))
    assert proc.stderr.strip() == ""


def test_the_first_tiny_model_build_reports_itself_and_nothing_else(tmp_path):
    """A fresh machine (an empty cache) builds the tiny base: its two lines and the saved line, no dataset bars or
    library warnings. (DeepSpeed, a test-only dependency here, would log its accelerator choice on import; it is
    told the CPU so it does not.)"""
    env = {**os.environ, "FTPLUGINS_CACHE": str(tmp_path / "cache"), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "ftplugins.cli", "tiny-model", str(tmp_path / "m")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    first = "ftplugins: pre-training the tiny base model once"
    assert lines[0].startswith(first) and str(tmp_path / "cache") in lines[0]
    assert lines[1].startswith("ftplugins: tiny base model ready in") and lines[2].startswith("saved the tiny")
    assert proc.stderr.strip() == "", proc.stderr


REPLICA = """
import logging, warnings
from ftplugins.output import quiet_replicas
quiet_replicas()
warnings.warn("a python warning")
logging.basicConfig()
logging.getLogger("transformers.trainer").warning("a library warning")
logging.getLogger("trl.trainer.sft_trainer").error("a library error")
"""


@pytest.mark.parametrize("rank,shown", [("0", True), ("1", False)])
def test_only_rank_0_prints_warnings(rank, shown):
    proc = subprocess.run([sys.executable, "-c", REPLICA], capture_output=True, text=True,
                          env={**QUIET_ENV, "RANK": rank})
    assert proc.returncode == 0, proc.stderr
    assert ("a python warning" in proc.stderr) is shown
    assert ("a library warning" in proc.stderr) is shown
    assert "a library error" in proc.stderr  # errors are never hidden


@pytest.mark.parametrize("given,level", [([], "error"), (["--log_level_replica", "info"], "info")])
def test_train_keeps_replicas_quiet_and_hides_trls_default_deprecation(tiny_model_dir, tmp_path, monkeypatch,
                                                                         given, level):
    import types

    from ftplugins import train as train_module
    from ftplugins.train import train

    seen = {}
    script = types.SimpleNamespace(main=lambda *args: seen.setdefault("args", args))
    monkeypatch.setattr(train_module, "import_patched", lambda name: script)  # the script the command runs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(["sft", "--model_name_or_path", tiny_model_dir, "--dataset_name", "x", "--output_dir", str(tmp_path),
               "--use_cpu", "true", "--bf16", "false", *given])
    training_args = next(a for a in seen["args"] if hasattr(a, "log_level_replica"))
    assert training_args.log_level_replica == level
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)]
