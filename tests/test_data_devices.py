"""Where the selection engine computes (no GPU needed: the choice is tested with CUDA and faiss' GPU count faked)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from ftplugins.data.devices import compute_device, faiss_on_gpu
from ftplugins.errors import OptionError


@pytest.fixture()
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device("auto") == torch.device("cpu")


def test_auto_is_this_processes_gpu_under_a_launcher(two_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert compute_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert compute_device("auto") == torch.device("cuda", 1)
    assert compute_device("cpu") == torch.device("cpu")
    assert compute_device("cuda:0") == torch.device("cuda", 0)


def test_asking_for_cuda_without_it_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="no CUDA device.*auto or cpu"):
        compute_device("cuda")


def test_faiss_runs_on_the_gpu_only_with_its_gpu_build(caplog):
    gpu_build, cpu_build = SimpleNamespace(get_num_gpus=lambda: 1), SimpleNamespace(get_num_gpus=lambda: 0)
    assert faiss_on_gpu(gpu_build, "auto") and faiss_on_gpu(gpu_build, "cuda")
    assert not faiss_on_gpu(gpu_build, "cpu")
    assert not faiss_on_gpu(cpu_build, "auto") and not faiss_on_gpu(SimpleNamespace(), "auto")
    with caplog.at_level(logging.WARNING, logger="ftplugins.data"):
        assert not faiss_on_gpu(cpu_build, "cuda")
    assert "faiss-gpu" in caplog.text


def test_kmeans_passes_the_choice_to_faiss(monkeypatch):
    pytest.importorskip("faiss")
    import faiss
    import numpy as np

    from ftplugins.data.kmeans import kmeans

    seen = []
    real = faiss.Kmeans

    def recording(*args, **kwargs):
        seen.append(kwargs["gpu"])
        kwargs["gpu"] = False  # no GPU here: record the choice, run on the CPU
        return real(*args, **kwargs)

    monkeypatch.setattr(faiss, "Kmeans", recording)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    kmeans(x, 2, iterations=2, restarts=1, device="auto")
    kmeans(x, 2, iterations=2, restarts=1, device="cpu")
    assert seen == [True, False]


def test_the_device_option_reaches_the_encoder_and_the_ot(monkeypatch):
    chosen = []

    def fake_compute_device(requested):
        chosen.append(requested)
        return torch.device("cpu")

    monkeypatch.setattr("ftplugins.data.devices.compute_device", fake_compute_device)
    from ftplugins.data import select

    pool = [{"text": f"row {i} about {'cats' if i % 2 else 'sums'}"} for i in range(12)]
    select("ot", pool, 3, target=[{"text": "a row about cats"}], device="cpu", cache_dir="none",
           show_progress=False, batch_size=8)
    assert chosen == ["cpu", "cpu"]  # the MiniLM encoder, then the Sinkhorn inputs


def test_bad_device_option_names_the_choices():
    from ftplugins.data import select

    with pytest.raises(OptionError, match="auto, cpu, cuda or cuda:N"):
        select("kmeans", [{"text": "a"}, {"text": "b"}], 1, device="gpu")
