"""A checkpoint saved by 2 DDP ranks resumed by 1 process (and the reverse) ends where the uninterrupted run does
when the global batch is kept; another global batch is refused, and the lost per-rank RNG states are warned about."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, ddp_flags
from test_train_cli import trl_yaml

from ftplugins.checkpoints import write_seal
from ftplugins.errors import FtpluginsError
from ftplugins.resume_world import check_resume_layout, run_layout, saved_layout


def layout(world, per_device, accumulation=1):
    return SimpleNamespace(world_size=world, per_device_train_batch_size=per_device,
                           gradient_accumulation_steps=accumulation)


def test_another_world_size_is_refused_with_another_global_batch_and_warned_about_with_the_same(tmp_path, caplog):
    write_seal(str(tmp_path), run=run_layout(layout(2, 2)))  # 2 ranks x 2 = a global batch of 4
    with pytest.raises(FtpluginsError, match=r"global batch of 4 .*global batch of 2,.*per_device_train_batch_size 4"):
        check_resume_layout(str(tmp_path), layout(1, 2))
    with caplog.at_level(logging.WARNING, logger="ftplugins.resume"):
        check_resume_layout(str(tmp_path), layout(1, 2, accumulation=2))  # 1 x 2 x 2 = 4
        assert "saved by 2 process(es), with 1" in caplog.text and "RNG states do not" in caplog.text
        caplog.clear()
        check_resume_layout(str(tmp_path), layout(2, 1, accumulation=2))  # same world size: nothing to say
        assert not caplog.text


def test_a_checkpoint_sealed_without_its_layout_gives_its_world_size_by_its_rng_files(tmp_path):
    for rank in range(3):
        (tmp_path / f"rng_state_{rank}.pth").write_bytes(b"")
    assert saved_layout(str(tmp_path)) == {"world_size": 3}
    check_resume_layout(str(tmp_path), layout(1, 8))  # no global batch recorded: a warning, not a refusal


def _adapter(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


@pytest.mark.slow
def test_one_process_to_two_ranks_and_back_resume_to_the_uninterrupted_weights(tiny_model_dir, data_dir, tmp_path,
                                                                                caplog):
    """One launch: 2 DDP ranks resume the step-1 checkpoint of an uninterrupted 1-process run (in this process) and
    save step 2; 1 process (in this process) resumes that 2-rank checkpoint. Global batch 4 throughout; both end
    where the uninterrupted run did."""
    from ftplugins.train import main

    common = dict(plugins=["ssf"], max_steps=3, learning_rate=5e-2, dataloader_drop_last=True, seed=0,
                  gradient_accumulation_steps=1, save_strategy="steps", save_steps=1)
    data = f"{data_dir}/arithmetic"
    one = trl_yaml(tmp_path / "one.yaml", tiny_model_dir, data, tmp_path / "one", per_device_train_batch_size=4,
                   **common)
    main(["sft", "--config", one])  # uninterrupted, 1 process; its checkpoint-1 holds rng_state.pth
    assert os.path.isfile(tmp_path / "one" / "checkpoint-1" / "rng_state.pth")

    shutil.copytree(tmp_path / "one" / "checkpoint-1", tmp_path / "two" / "checkpoint-1")
    two = trl_yaml(tmp_path / "two.yaml", tiny_model_dir, data, tmp_path / "two", per_device_train_batch_size=2,
                   **common)
    ran = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), "-m", "ftplugins.train", "sft", "--config", two,
                          "--resume_from_checkpoint", str(tmp_path / "two" / "checkpoint-1")],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=LAUNCH_TIMEOUT)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "saved by 1 process(es), with 2" in ran.stderr
    assert os.path.isfile(tmp_path / "two" / "checkpoint-2" / "rng_state_1.pth")  # saved by 2 ranks

    shutil.copytree(tmp_path / "two" / "checkpoint-2", tmp_path / "back" / "checkpoint-2")
    back = trl_yaml(tmp_path / "back.yaml", tiny_model_dir, data, tmp_path / "back", per_device_train_batch_size=4,
                    **common)
    with caplog.at_level(logging.WARNING, logger="ftplugins.resume"):
        main(["sft", "--config", back, "--resume_from_checkpoint", str(tmp_path / "back" / "checkpoint-2")])
    assert "saved by 2 process(es), with 1" in caplog.text

    straight = _adapter(tmp_path / "one")
    for resumed, started_at in ((tmp_path / "two", tmp_path / "one" / "checkpoint-1"),
                                (tmp_path / "back", tmp_path / "two" / "checkpoint-2")):
        weights, start = _adapter(resumed), _adapter(started_at)
        assert weights.keys() == straight.keys() and straight
        assert any(not torch.allclose(weights[k], start[k]) for k in weights), "the resumed run did not train"
        for key in straight:
            torch.testing.assert_close(weights[key], straight[key], rtol=1e-4, atol=1e-5, msg=f"{resumed}: {key}")
