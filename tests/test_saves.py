"""Saves survive a crash anywhere, on any file system layout, and one run owns its output folder.

Probes of issue 21: an output folder that is a mount point or has a read-only parent (real ones where this
machine allows, simulated otherwise), checkpoints killed half-way or re-saved over, resume past broken
checkpoints, a re-run killed after the delta, a second run into the same folder.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import cpu_args
from transformers import Trainer, TrainerCallback

import ftplugins
from ftplugins.atomic import STAGING, staged_dir
from ftplugins.checkpoints import SEAL, last_complete_checkpoint
from ftplugins.output_lock import LOCK_FILE, OutputFolderInUseError, lock_output_dir
from ftplugins.run_output import MANIFEST, check_manifest
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer


def trainer_for(output_dir, plugins=("ssf",), **overrides):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, list(plugins))
    args = cpu_args(SFTConfig, output_dir, **overrides)
    return cls(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(24), processing_class=tiny_tokenizer())


def inside(path, folder):
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder + os.sep)


@pytest.fixture
def fenced(tmp_path, monkeypatch):
    """``tmp_path/parent/out``: ``out`` behaves as its own file system (renames across it fail with EXDEV)
    and ``parent`` is read-only (nothing can be created in it). Simulated, so it holds for root too."""
    parent, out = tmp_path / "parent", tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    real_rename, real_replace, real_mkdir = os.rename, os.replace, os.mkdir

    def across(src, dst):
        return inside(src, out) != inside(dst, out)

    def rename(src, dst, *a, **k):
        if across(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link (simulated mount)", str(src))
        return real_rename(src, dst, *a, **k)

    def replace(src, dst, *a, **k):
        if across(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link (simulated mount)", str(src))
        return real_replace(src, dst, *a, **k)

    def mkdir(path, *a, **k):
        if os.path.dirname(os.path.abspath(path)) == str(parent):
            raise PermissionError(errno.EACCES, "Permission denied (simulated read-only parent)", str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "mkdir", mkdir)
    return out


@pytest.fixture
def mounted(tmp_path):
    """A real tmpfs mounted as the output folder, whose parent is then made read-only; skipped where this
    machine does not allow mounting (not root, no CAP_SYS_ADMIN)."""
    parent = tmp_path / "ro"
    out = parent / "mnt"
    out.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (the simulated mount test covers EXDEV)")
    os.chmod(parent, 0o555)
    try:
        yield out
    finally:
        os.chmod(parent, 0o755)
        subprocess.run(["umount", "-l", str(out)], check=False)


def no_staging_left(folder):
    return not any(STAGING in dirs for _root, dirs, _files in os.walk(folder))


# --- staging on the destination's own file system -------------------------------------------------------


def test_staged_writes_stay_on_the_destinations_file_system(fenced):
    with staged_dir(str(fenced)) as tmp, open(os.path.join(tmp, "a.json"), "w") as handle:
        handle.write("{}")
    assert (fenced / "a.json").read_text() == "{}" and no_staging_left(fenced)


def test_final_save_and_manifest_into_a_mount_with_a_read_only_parent(fenced):
    trainer = trainer_for(fenced)
    trainer.train()
    trainer.save_model()
    assert (fenced / "adapter_model.safetensors").is_file()
    assert check_manifest(str(fenced)) == [] and no_staging_left(fenced)


def test_delta_cli_writes_into_a_mount_with_a_read_only_parent(fenced, tmp_path):
    from test_sparse_delta import perturbed_model_dir

    from ftplugins.cli import main
    from ftplugins.sparse.delta import save_delta
    from ftplugins.testing import save_tiny_llama

    base_dir = save_tiny_llama(str(tmp_path / "base"))
    delta, _ = perturbed_model_dir(base_dir, tmp_path, 1)
    path = save_delta(delta, str(fenced / "sparse_delta.safetensors"))
    main(["delta", "apply", base_dir, path, "-o", str(fenced / "tuned")])
    main(["delta", "compose", path, path, "-o", str(fenced / "twice.safetensors")])
    assert (fenced / "tuned" / "model.safetensors").is_file() and (fenced / "twice.safetensors").is_file()


def test_a_real_tmpfs_mount_with_a_read_only_parent(mounted):
    trainer = trainer_for(mounted, save_strategy="steps", save_steps=2)
    trainer.train()
    trainer.save_model()
    assert (mounted / "checkpoint-2" / "trainer_state.json").is_file()
    assert check_manifest(str(mounted)) == [] and no_staging_left(mounted)


# --- checkpoints appear whole ---------------------------------------------------------------------------


def crash_while_writing_the_optimizer(monkeypatch):
    real = Trainer._save_optimizer_and_scheduler

    def torn(self, output_dir):
        real(self, output_dir)
        with open(os.path.join(output_dir, "optimizer.pt"), "r+b") as handle:
            handle.truncate(100)
        raise KeyboardInterrupt("killed while writing optimizer.pt")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", torn)


def test_a_checkpoint_killed_half_way_never_appears(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path / "run", save_strategy="steps", save_steps=2, max_steps=4)
    crash_while_writing_the_optimizer(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoint-2").exists()
    assert (tmp_path / "run" / STAGING).exists()  # what a killed save leaves...
    trainer_for(tmp_path / "run")
    assert not (tmp_path / "run" / STAGING).exists()  # ...the next run on the folder removes


def test_resaving_over_a_whole_checkpoint_keeps_it_whole(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path / "run", save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    before = {name: (checkpoint / name).read_bytes() for name in os.listdir(checkpoint)}
    assert "optimizer.pt" in before and "trainer_state.json" in before and SEAL in before
    crash_while_writing_the_optimizer(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        trainer._save_checkpoint(trainer.model, trial=None)  # the same step saved again, killed half-way
    assert {name: (checkpoint / name).read_bytes() for name in os.listdir(checkpoint)} == before


class FirstStep(TrainerCallback):
    def __init__(self):
        self.first = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first is None:
            self.first = state.global_step


def test_resume_skips_incomplete_checkpoints_with_a_warning(tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    trainer_for(run, save_strategy="steps", save_steps=2, max_steps=2).train()
    good = run / "checkpoint-2"
    shutil.copytree(good, run / "checkpoint-3")  # sealed, but optimizer.pt was cut short
    with open(run / "checkpoint-3" / "optimizer.pt", "r+b") as handle:
        handle.truncate(64)
    shutil.copytree(good, run / "checkpoint-4")  # no state file: killed before the end
    os.remove(run / "checkpoint-4" / "trainer_state.json")
    shutil.copytree(good, run / "checkpoint-5")  # written without a seal (plain transformers), truncated
    os.remove(run / "checkpoint-5" / SEAL)
    with open(run / "checkpoint-5" / "optimizer.pt", "r+b") as handle:
        handle.truncate(64)
    with caplog.at_level(logging.WARNING, logger="ftplugins.checkpoints"):
        assert last_complete_checkpoint(str(run)) == str(good)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"skipping incomplete checkpoint {run / f'checkpoint-{n}'}" for n in (5, 4, 3)]
    trainer = trainer_for(run, max_steps=4)
    first = FirstStep()
    trainer.add_callback(first)
    trainer.train(resume_from_checkpoint=True)
    assert first.first == 2 and trainer.state.global_step == 4  # resumed from checkpoint-2, not from scratch
    with pytest.raises(ftplugins.FtpluginsError, match="checkpoint-4.*incomplete.*no trainer_state.json"):
        trainer_for(run, max_steps=4).train(resume_from_checkpoint=str(run / "checkpoint-4"))


def test_the_trainer_internals_the_checkpoint_staging_relies_on():
    """If this fails, transformers changed how ``_save_checkpoint`` picks its folder: update
    ftplugins/checkpoints.py (it redirects ``_get_output_dir`` while a checkpoint is written)."""
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._get_output_dir).parameters) == ["self", "trial"]
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "self._get_output_dir(trial=trial)" in source and "rotate_checkpoints(" in source


# --- the run's artifacts belong together ----------------------------------------------------------------


def test_manifest_lists_the_runs_files_with_checksums(tmp_path):
    from ftplugins.atomic import sha256_file

    trainer = trainer_for(tmp_path / "run")
    trainer.train()
    trainer.save_model()
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    artifacts = manifest["artifacts"]
    assert {"adapter_model.safetensors", "adapter_config.json", "training_args.bin"} <= set(artifacts)
    for rel, entry in artifacts.items():
        assert entry["sha256"] == sha256_file(str(tmp_path / "run" / rel)), rel
    assert not any(rel.startswith("checkpoint-") for rel in artifacts)
    with open(tmp_path / "run" / "adapter_model.safetensors", "r+b") as handle:
        handle.truncate(10)
    assert check_manifest(str(tmp_path / "run")) == ["adapter_model.safetensors changed after the run wrote it "
                                                     "(sha256 differs)"]


def test_a_rerun_killed_after_the_delta_does_not_vouch_for_the_old_model(tmp_path):
    from ftplugins.atomic import sha256_file

    run = tmp_path / "run"
    trainer = trainer_for(run, plugins=["lift"])
    trainer.train()
    trainer.save_model()
    old = json.loads((run / MANIFEST).read_text())["artifacts"]
    assert {"model.safetensors", "sparse_delta.safetensors"} <= set(old)
    again = trainer_for(run, plugins=["lift"], learning_rate=1e-2)
    again.train()  # writes the new delta; killed here, before its save_model()
    artifacts = json.loads((run / MANIFEST).read_text())["artifacts"]
    assert "model.safetensors" not in artifacts  # the old model is not part of this run
    assert artifacts["sparse_delta.safetensors"]["sha256"] == sha256_file(str(run / "sparse_delta.safetensors"))
    assert artifacts["sparse_delta.safetensors"]["sha256"] != old["sparse_delta.safetensors"]["sha256"]


# --- one run per output folder --------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from ftplugins.output_lock import lock_output_dir
    lock = lock_output_dir(sys.argv[1], "the holder test")
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_run_is_refused_until_the_first_process_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputFolderInUseError, match=f"in use by another run.*pid {holder.pid}"):
            trainer_for(run)
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, the lock does not
        holder.wait(timeout=30)
        assert (run / LOCK_FILE).exists()
        trainer = trainer_for(run)
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        trainer.end()
        assert not (run / LOCK_FILE).exists()  # released (and its file removed) by end()
        with lock_output_dir(str(run)):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    first = lock_output_dir(str(tmp_path))
    second = lock_output_dir(str(tmp_path))
    probe = "import sys; from ftplugins.output_lock import lock_output_dir; lock_output_dir(sys.argv[1])"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env)
    assert other.returncode != 0 and "is in use by another run" in other.stderr
    first.release()
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env)
    assert other.returncode != 0  # still held by `second`
    second.release()
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env)
    assert other.returncode == 0, other.stderr


@pytest.mark.slow
def test_the_cli_refuses_a_second_run_in_one_line(tmp_path, tiny_model_dir, data_dir):
    from test_train_cli import trl_yaml

    config = trl_yaml(tmp_path / "c.yaml", tiny_model_dir, f"{data_dir}/arithmetic", tmp_path / "out", max_steps=1)
    with lock_output_dir(str(tmp_path / "out"), "a test"):
        result = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", "--config", config],
                                capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ftplugins: error: output folder") and "in use by another run (a test, pid" in last
    assert "Traceback" not in result.stderr
