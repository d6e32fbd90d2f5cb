"""`python -m ftplugins.run --plugins ... -- script.py`: plugins for a script that knows nothing of us."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ftplugins.errors import FtpluginsError
from ftplugins.run import run_script

PLAIN_SFT_SCRIPT = textwrap.dedent(
    """
    import sys
    from trl import SFTConfig, SFTTrainer
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    args = SFTConfig(output_dir=sys.argv[1], use_cpu=True, bf16=False, report_to="none", max_steps=2,
                     per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True)
    trainer = SFTTrainer(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(8),
                         processing_class=tiny_tokenizer())
    trainer.train()
    print("TRAINER_CLASS", type(trainer).__name__)
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "plain_sft.py"
    path.write_text(PLAIN_SFT_SCRIPT)
    return str(path)


def test_wrapped_script_gets_the_plugins(script, tmp_path, recorder_entry_point, capsys):
    run_script(["--plugins", "recorder", "--recorder_tag", "x", "--", script, str(tmp_path / "out")])
    assert recorder_entry_point.calls.count("validate") == 1
    assert recorder_entry_point.calls[-1] == "post_train"
    assert recorder_entry_point.runs[-1].options_for("recorder").recorder_tag == "x"
    assert "TRAINER_CLASS SFTTrainerWithRecorder" in capsys.readouterr().out


def test_patching_is_undone_after_the_script(script, tmp_path, recorder_entry_point):
    import transformers
    import trl

    before = (trl.SFTTrainer, transformers.Trainer)
    run_script(["--plugins", "recorder", "--", script, str(tmp_path / "out")])
    assert (trl.SFTTrainer, transformers.Trainer) == before
    import trl.trainer.sft_trainer as sft_module

    assert sft_module.SFTTrainer is before[0]


def test_script_that_builds_no_trainer_is_an_error(tmp_path, recorder_entry_point):
    path = tmp_path / "noop.py"
    path.write_text("print('hello')\n")
    with pytest.raises(FtpluginsError, match="without building any trainer"):
        run_script(["--plugins", "recorder", "--", str(path)])


def test_missing_separator_is_explained(script):
    with pytest.raises(FtpluginsError, match="missing `--`"):
        run_script(["--plugins", "recorder", script])


@pytest.mark.slow
def test_wrapper_as_a_module_in_a_subprocess(script, tmp_path):
    """The real command line with a built-in plugin (no test-only registration)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftplugins.run", "--plugins", "ssf", "--", script, str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRAINER_CLASS SFTTrainerWithSsf" in proc.stdout
    assert (tmp_path / "out").exists()
