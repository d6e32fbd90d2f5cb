"""Our uniform soup equals mergekit's ``linear`` merge to fp32 rounding (when a mergekit environment exists).

mergekit pins its own torch/transformers, so it lives in an environment of its own (``benchmarks/.mergekit-venv`` or
``$FTPLUGINS_MERGEKIT_PYTHON``; see :mod:`benchmarks.perf.soup`, where this comparison always runs with the speed
and memory numbers). Without one this test is skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftplugins.tools import soup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmarks/ is a folder of the repository, not an installed package

from benchmarks.perf import soup as soup_bench  # noqa: E402


@pytest.mark.slow
def test_uniform_soup_equals_mergekit_linear(tmp_path):
    python, missing = soup_bench.find_mergekit(None)
    if python is None:
        pytest.skip(missing)
    paths = soup_bench.build_ingredients("tiny", 3, str(tmp_path / "ingredients"))
    soup.uniform(paths, str(tmp_path / "ours"))
    config = soup_bench.mergekit_config(paths, str(tmp_path))
    done = subprocess.run(soup_bench.mergekit_soup(python, config, str(tmp_path / "mergekit"), threads=1),
                          env=soup_bench._mergekit_env(1), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    check = soup_bench.compare(str(tmp_path / "ours"), str(tmp_path / "mergekit"), paths)
    assert check["equal"], check
    assert check["tensors"] == len(soup_bench.tensors_of(paths[0]))
    # the ingredients differ, so equal outputs are not the trivial copy of one of them
    assert soup_bench.compare(paths[0], str(tmp_path / "mergekit"), paths)["equal"] is False
