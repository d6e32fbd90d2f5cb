"""The optional kernel distribution in the top-level ``kernels/`` folder: its package, that its folder shadows
no ``kernels`` package, and that ftplugins falls back to the torch references without it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import pytest
import torch

from ftplugins.kernels import dispatch
from ftplugins.kernels import sparse_adamw_multi as dispatcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject(path):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(path, "rb") as f:
        return tomllib.load(f)


def test_the_distribution_packages_ftplugins_kernels_with_the_extra_s_triton():
    kernels = pyproject(os.path.join(ROOT, "kernels", "pyproject.toml"))
    main = pyproject(os.path.join(ROOT, "pyproject.toml"))
    assert kernels["project"]["name"] == "ftplugins-kernels"
    assert kernels["tool"]["setuptools"]["packages"]["find"]["include"] == ["ftplugins_kernels*"]
    assert os.path.isfile(os.path.join(ROOT, "kernels", "ftplugins_kernels", "__init__.py"))
    triton = [r for r in kernels["project"]["dependencies"] if r.startswith("triton")]
    assert triton == main["project"]["optional-dependencies"]["kernels"]  # one triton range for both
    # ftplugins' own package search does not pick the kernels up: they ship only in their own distribution
    assert main["tool"]["setuptools"]["packages"]["find"]["include"] == ["ftplugins*"]
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py"))


def test_the_kernels_folder_shadows_no_kernels_package(monkeypatch):
    """With the repository root on the path (``python -m`` from a checkout), ``import kernels`` still finds the
    Hugging Face package where it is installed, and nothing importable otherwise: the folder has no
    ``__init__.py``, so it is at most an empty namespace portion, which any installed package wins over."""
    monkeypatch.syspath_prepend(ROOT)
    spec = importlib.util.find_spec("kernels")
    assert spec is None or spec.origin is None or not spec.origin.startswith(os.path.join(ROOT, "kernels"))
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:  # not installed: transformers must not take the folder for it
        from transformers.utils import import_utils

        assert not import_utils.is_kernels_available.__wrapped__()


def test_without_the_distribution_the_references_run(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ftplugins_kernels"
                        else real(name, *a))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # would route CPU tensors to Triton if the kernels were there
    monkeypatch.setitem(sys.modules, "ftplugins_kernels.sparse_adamw_multi_triton", None)  # importing it fails
    assert not dispatch.use_triton(torch.zeros(1))
    param = torch.ones(4)
    update = dispatcher.SparseAdamWTensor(param, torch.ones(4), torch.zeros(4), torch.zeros(4), None, None, lr=0.1,
                                          beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    dispatcher.sparse_adamw_multi_([update])
    torch.testing.assert_close(param, torch.full((4,), 0.9))  # Adam's first step moves each entry by lr
