"""CPU threads: one intra-op thread for a small model trained on the CPU, unless the user chose a count."""

from __future__ import annotations

import pytest
import torch

import ftplugins
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer
from ftplugins.threads import limit_threads_for_small_model, one_thread

from conftest import cpu_args


@pytest.fixture
def two_threads(monkeypatch):
    """torch's default on a 2-core machine, with no OMP_NUM_THREADS set; restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_composed_trainer_on_the_cpu_uses_one_thread_for_a_tiny_model(two_threads, tmp_path):
    from trl import SFTConfig, SFTTrainer

    trainer_cls = ftplugins.compose(SFTTrainer, [])
    trainer_cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
                processing_class=tiny_tokenizer())
    assert torch.get_num_threads() == 1


def test_the_users_omp_num_threads_is_respected(two_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    limit_threads_for_small_model(tiny_llama(), on_cpu=True)
    assert torch.get_num_threads() == 2
    with one_thread():
        assert torch.get_num_threads() == 2


def test_gpu_runs_and_large_models_keep_torchs_threads(two_threads, monkeypatch):
    limit_threads_for_small_model(tiny_llama(), on_cpu=False)
    assert torch.get_num_threads() == 2
    monkeypatch.setattr("ftplugins.threads.SMALL_MODEL_PARAMETERS", 1000)
    limit_threads_for_small_model(tiny_llama(), on_cpu=True)
    assert torch.get_num_threads() == 2


def test_one_thread_restores_the_count(two_threads):
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
