"""MBPP-format pass@k: the estimator against enumeration, the harness end to end (generation -> sandbox -> pass@k),
hostile samples bounded by the sandbox, bad input as one line, and the post_train plugin."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import uuid

import pytest
import torch

from conftest import cpu_args
from ftplugins.errors import FtpluginsError
from ftplugins.eval.mbpp import TINY, build_prompt, evaluate_mbpp, load_mbpp, score_samples, split_shots
from ftplugins.eval.passk import mean_pass_at_k, pass_at_k
from ftplugins.eval.sandbox import Limits, namespaces_available
from ftplugins.testing import tiny_llama, tiny_tokenizer

SMALL = Limits(address_space_mb=512, processes=8, file_size_mb=1, open_files=32, workdir_mb=8)


# --- the estimator ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_enumeration_of_all_k_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            closed = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n_and_refuses_impossible_k():
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100), rel=1e-9)
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert mean_pass_at_k([(4, 0), (4, 4)], 2) == pytest.approx(0.5)
    with pytest.raises(FtpluginsError, match="k=5 needs at least k samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(FtpluginsError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)


# --- data and prompt ------------------------------------------------------------------------------------------------

def test_the_shipped_set_loads_and_its_references_pass_in_the_sandbox():
    rows = load_mbpp(TINY)
    assert [r["task_id"] for r in rows] == list(range(1, 9))
    result = score_samples(rows, [[f"{r['code']}\n[DONE]"] for r in rows], (1,), timeout=10, limits=SMALL)
    assert result["metrics"]["pass@1"] == 1.0
    # and a wrong program fails its tests
    wrong = score_samples(rows[:1], [["def add(a, b):\n    return a - b"]], (1,), limits=SMALL)
    assert wrong["metrics"]["pass@1"] == 0.0 and wrong["tasks"][0]["outcomes"] == ["failed"]


def test_prompt_uses_tasks_2_to_4_as_examples_and_does_not_evaluate_them():
    shots, tasks = split_shots(load_mbpp(TINY), None)
    assert [s["task_id"] for s in shots] == [2, 3, 4]
    assert [t["task_id"] for t in tasks] == [1, 5, 6, 7, 8]
    prompt = build_prompt(tasks[0], shots)
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3 and prompt.endswith("[BEGIN]\n")
    assert "def reverse(s)" in prompt and "assert add(2, 3) == 5" in prompt
    assert split_shots(load_mbpp(TINY), [])[0] == []


@pytest.mark.parametrize("row, message", [
    ({"text": "t", "code": "c"}, "lacks the column\\(s\\) test_list"),
    ({"text": "t", "test_list": ["assert 1"]}, "lacks the column\\(s\\) code"),
    ({"text": "t", "code": "c", "test_list": []}, "has no value for test_list|expected a non-empty list"),
    ({"text": "t", "code": "c", "test_list": [1, 2]}, "expected a non-empty list of assert statements"),
])
def test_bad_rows_are_one_clear_error(row, message):
    with pytest.raises(FtpluginsError, match=message):
        load_mbpp([row])


def test_a_csv_with_a_missing_column_is_one_line_from_the_cli(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('task_id,text,code\n1,add,"def add(a,b): return a+b"\n')
    proc = subprocess.run([sys.executable, "-m", "ftplugins.eval", "mbpp", "--model", str(tmp_path), "--data",
                           str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks the column(s) test_list" in lines[0], proc.stderr


# --- hostile samples: each a failed sample, nothing left behind -------------------------------------------------------

FORK_BOMB = """
import ctypes, os, time
for _ in range(64):  # counted: a broken sandbox cannot hurt the machine
    try:
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, b"{marker}", 0, 0, 0)  # PR_SET_NAME: findable in /proc/PID/comm
            time.sleep(30)
            os._exit(0)
    except OSError:
        break
"""


def _live_processes_named(marker: str) -> list[int]:
    """Host pids whose name (/proc/PID/comm, set by the sample's children) is ``marker``; zombies excluded."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm", "rb") as handle:
                    comm = handle.read().strip()
                with open(f"/proc/{name}/stat", "rb") as handle:
                    state = handle.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if comm == marker.encode() and state != b"Z":
                found.append(int(name))
    return found


def test_hanging_forking_and_memory_hungry_samples_fail_and_leave_nothing_behind(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the runner's per-sample folders go
    marker = f"mb{uuid.uuid4().hex[:13]}"  # a process name holds 15 characters
    task = {"task_id": 1, "text": "add", "code": "", "test_list": ["assert add(2, 3) == 5"]}
    hostile = [
        "import time\ndef add(a, b):\n    time.sleep(30)\n    return a + b",  # hangs
        FORK_BOMB.format(marker=marker) + "\ndef add(a, b):\n    return a + b\nwhile True: pass",  # forks, spins
        "hog = bytearray(10 * 1024 ** 3)\ndef add(a, b):\n    return a + b",  # 10 GB
        "def add(a, b):\n    return a + b",  # the one correct sample
    ]
    result = score_samples([task], [hostile], (1, 2, 4), timeout=2.0, limits=SMALL)
    outcomes = result["tasks"][0]["outcomes"]
    assert outcomes[0] == "timeout" and outcomes[1] == "timeout" and outcomes[2] == "failed"
    assert outcomes[3] == "passed"
    assert result["tasks"][0]["correct"] == 1
    assert result["metrics"] == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5), "pass@4": 1.0}
    assert _live_processes_named(marker) == []
    assert list(scratch.iterdir()) == []  # every sample's folder removed


@pytest.mark.skipif(not namespaces_available(), reason="without user namespaces the sandbox documents a writable "
                    "file system (tests/test_sandbox.py checks that fallback)")
def test_a_sample_that_writes_outside_its_folder_fails_and_writes_nothing(tmp_path):
    targets = [str(tmp_path / f"escape-{uuid.uuid4().hex}"), f"/tmp/ftplugins-mbpp-escape-{uuid.uuid4().hex}"]
    sample = ("def add(a, b):\n    for t in %r:\n        open(t, 'w').write('x')\n    return a + b" % targets)
    task = {"task_id": 1, "text": "add", "code": "", "test_list": ["assert add(2, 3) == 5"]}
    try:
        result = score_samples([task], [[sample]], (1,), limits=SMALL)
        landed = [t for t in targets if os.path.exists(t)]
    finally:
        for t in targets:
            if os.path.exists(t):
                os.remove(t)
    assert result["tasks"][0]["outcomes"] == ["failed"] and landed == []


# --- generation -> sandbox -> pass@k ------------------------------------------------------------------------------

class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM that answers the prompt's last task with the reference solution for tasks in
    ``solves`` and with a wrong program otherwise (so the expected pass@k is known exactly)."""

    def __init__(self, tokenizer, rows, solves):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.rows, self.solves = tokenizer, rows, set(solves)
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, **kwargs):
        self.calls.append((input_ids.shape[0], num_return_sequences))
        outs = []
        for row_ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(row_ids[mask.bool()], skip_special_tokens=True)
            task = next(r for r in self.rows if prompt.rfind(r["text"]) > prompt.rfind("[DONE]"))
            code = task["code"] if task["task_id"] in self.solves else "def nothing():\n    pass"
            new = self.tokenizer(code + "\n[DONE]\nextra", add_special_tokens=False)["input_ids"]
            outs += [row_ids.tolist() + new] * num_return_sequences
        width = max(map(len, outs))
        pad = self.tokenizer.pad_token_id
        return torch.tensor([o + [pad] * (width - len(o)) for o in outs])


def test_evaluate_mbpp_generates_n_samples_per_task_in_batches_and_scores_them():
    tokenizer, rows = tiny_tokenizer(), load_mbpp(TINY)
    model = ScriptedLM(tokenizer, rows, solves={1, 6})
    result = evaluate_mbpp(model, tokenizer, TINY, n=3, ks=(1, 3), temperature=0.7, batch_size=2, limits=SMALL)
    assert model.calls == [(2, 3), (2, 3), (1, 3)]  # 5 tasks, 2 per call, 3 samples each
    assert [t["task_id"] for t in result["tasks"]] == [1, 5, 6, 7, 8]
    assert [t["correct"] for t in result["tasks"]] == [3, 0, 3, 0, 0]
    assert result["metrics"] == {"pass@1": pytest.approx(0.4), "pass@3": pytest.approx(0.4)}
    assert all("[DONE]" not in s for t in result["tasks"] for s in t["samples"])


def test_evaluate_mbpp_with_a_real_tiny_model_returns_n_samples_each():
    result = evaluate_mbpp(tiny_llama(), tiny_tokenizer(), TINY, n=2, ks=(1, 2), max_new_tokens=8, batch_size=4,
                           shot_ids=[], limits=SMALL, timeout=5)
    assert len(result["tasks"]) == 8 and all(t["n"] == 2 and len(t["samples"]) == 2 for t in result["tasks"])
    assert result["config"]["temperature"] == 0.8 and 0.0 <= result["metrics"]["pass@2"] <= 1.0
    with pytest.raises(FtpluginsError, match="temperature > 0"):
        evaluate_mbpp(tiny_llama(), tiny_tokenizer(), TINY, n=2, ks=(1,), temperature=0.0)


# --- the post_train plugin --------------------------------------------------------------------------------------

def test_plugin_logs_pass_at_k_after_training_and_writes_its_report(tmp_path):
    import ftplugins
    from ftplugins.eval.mbpp_plugin import plugin
    from ftplugins.testing import arithmetic_dataset
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [plugin], mbpp_eval_data=TINY, mbpp_eval_max_new_tokens=4)
    trainer = cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, max_steps=1),
                  train_dataset=arithmetic_dataset(4), processing_class=tiny_tokenizer())
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "mbpp/pass@1" in entry]
    assert len(logged) == 1 and 0.0 <= logged[0]["mbpp/pass@1"] <= 1.0
    with open(tmp_path / "mbpp_eval.json") as handle:
        report = json.load(handle)
    assert report["metrics"]["pass@1"] == logged[0]["mbpp/pass@1"] and len(report["tasks"]) == 5


def test_plugin_refuses_missing_data_and_greedy_pass_at_k_before_training():
    import ftplugins
    from ftplugins.eval.mbpp_plugin import plugin
    from trl import SFTTrainer

    with pytest.raises(FtpluginsError, match="--mbpp_eval_data"):
        ftplugins.compose(SFTTrainer, [plugin])(model=tiny_llama(), processing_class=tiny_tokenizer())
    with pytest.raises(FtpluginsError, match="greedy samples would be identical"):
        ftplugins.compose(SFTTrainer, [plugin], mbpp_eval_data=TINY, mbpp_eval_n=4, mbpp_eval_k="1,4")(
            model=tiny_llama(), processing_class=tiny_tokenizer())
    with pytest.raises(FtpluginsError, match="pass@8 needs n >= 8"):
        ftplugins.compose(SFTTrainer, [plugin], mbpp_eval_data=TINY, mbpp_eval_k="1,8")(
            model=tiny_llama(), processing_class=tiny_tokenizer())


def test_the_cli_writes_the_result_file(tiny_model_dir, tmp_path):
    from ftplugins.cli import main

    out = tmp_path / "result.json"
    main(["eval", "mbpp", "--model", tiny_model_dir, "--max_new_tokens", "4", "--shots", "none", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"pass@1"} and result["config"]["shots"] == [] and len(result["tasks"]) == 8
