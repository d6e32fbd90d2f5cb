"""s3ft: selective self-to-supervised targets from the frozen initial model, judged against gold, then SFT."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.methods.s3ft import build_dataset, plugin
from ftplugins.methods.s3ft.construct import paraphrase_request
from ftplugins.methods.s3ft.judges import (
    code_tests_pass,
    exact_match,
    import_judge,
    last_number,
    normalized_match,
    numeric_match,
    resolve_judge,
)
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

FAST = {"max_new_tokens": 12, "batch_size": 4, "show_progress": False}


def never(prediction, gold):
    """The always-False judge: S3FT must reduce to plain SFT."""
    return False


def always(prediction, gold):
    return True


def odd_length(prediction, gold):
    """Accepts some answers and rejects others, deterministically (a random tiny model never gets sums right)."""
    return len(prediction) % 2 == 1


not_a_function = 42


class Recorder:
    """A judge that remembers what it accepted, and can fail on its n-th call (an interrupted run)."""

    def __init__(self, accept=odd_length, fail_at=None):
        self.accept, self.fail_at, self.calls, self.accepted, self.prompts = accept, fail_at, 0, [], set()

    def __call__(self, prediction, gold, example):
        self.calls += 1
        self.prompts.add(example["prompt"])
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("interrupted")
        ok = self.accept(prediction, gold)
        if ok:
            self.accepted.append((example["prompt"], prediction))
        return ok


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sft_args(tmp_path, **overrides):
    from trl import SFTConfig

    return cpu_args(SFTConfig, tmp_path, **{"max_length": 64, "per_device_train_batch_size": 4, **overrides})


def train_sft(tmp_path, dataset, plugins=(), **options):
    from trl import SFTTrainer

    cls = ftplugins.compose(SFTTrainer, list(plugins), **options) if plugins else SFTTrainer
    trainer = cls(model=tiny_llama(), args=sft_args(tmp_path), train_dataset=dataset,
                  processing_class=tiny_tokenizer())
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return trainer, losses


# the paper's invariants


def test_always_false_judge_returns_the_gold_dataset():
    data = arithmetic_dataset(10)
    out, report = build_dataset(tiny_llama(), tiny_tokenizer(), data, judge=never, **FAST)
    assert out.to_list() == data.to_list()
    assert (report["self"], report["paraphrase"], report["gold"]) == (0, 0, 10)


def test_always_false_judge_trains_exactly_like_plain_sft(tmp_path):
    data = arithmetic_dataset(12)
    plain, plain_losses = train_sft(tmp_path / "sft", data)
    s3ft, s3ft_losses = train_sft(tmp_path / "s3ft", data, [plugin], s3ft_judge=never, s3ft_max_new_tokens=8,
                                  s3ft_batch_size=6)
    assert s3ft.ftplugins_run.state["s3ft"]["report"]["gold"] == 12
    assert s3ft_losses == plain_losses and len(plain_losses) == 2
    for name, value in weights(plain.model).items():
        torch.testing.assert_close(weights(s3ft.model)[name], value, rtol=0, atol=0)


def test_every_non_gold_target_passed_the_judge_and_counts_add_up():
    data = arithmetic_dataset(16)
    judge = Recorder()
    out, report = build_dataset(tiny_llama(), tiny_tokenizer(), data, judge=judge, **FAST)
    assert report["self"] + report["paraphrase"] + report["gold"] == report["rows"] == 16
    assert report["self"] > 0 and report["paraphrase"] > 0 and report["gold"] > 0  # all three branches taken
    accepted = set(judge.accepted)
    changed = 0
    for before, after in zip(data, out):
        assert after["prompt"] == before["prompt"] and after["answer"] == before["answer"]
        if after["completion"] != before["completion"]:
            changed += 1
            assert (before["prompt"], after["completion"]) in accepted
    assert changed == report["self"] + report["paraphrase"]


def test_self_branch_takes_the_greedy_answer_and_paraphrase_is_asked_only_for_rejected_rows():
    from ftplugins.methods.s3ft.construct import greedy_generate, prompt_ids

    model, tok = tiny_llama(), tiny_tokenizer()
    data = arithmetic_dataset(4)
    out, report = build_dataset(model, tok, data, judge=always, **FAST)
    greedy = greedy_generate(model, tok, [prompt_ids(tok, p, False) for p in data["prompt"]], 12)
    assert out["completion"] == greedy and report["self"] == 4
    judge = Recorder(accept=never)
    build_dataset(model, tok, data, judge=judge, **FAST)
    assert judge.calls == 8  # answer + paraphrase per row
    judge = Recorder(accept=never)
    build_dataset(model, tok, data, judge=judge, paraphrase=False, **FAST)
    assert judge.calls == 4


def test_generation_uses_the_frozen_initial_model_before_any_step(tmp_path):
    from trl import SFTTrainer

    model = tiny_llama()
    model.train()
    initial = weights(model)
    seen = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        same = all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())
        seen.append((same, model.training, torch.is_grad_enabled()))
        return generate(*args, **kwargs)

    model.generate = recording_generate
    cls = ftplugins.compose(SFTTrainer, [plugin], s3ft_judge="exact", s3ft_max_new_tokens=8)
    trainer = cls(model=model, args=sft_args(tmp_path), train_dataset=arithmetic_dataset(8),
                  processing_class=tiny_tokenizer())
    assert seen and all(s == (True, False, False) for s in seen)  # M0's weights, eval mode, no grad
    assert trainer.optimizer is None and model.training  # built before the optimizer; train flag restored
    calls = len(seen)
    trainer.train()
    assert len(seen) == calls  # never generates from the model being trained
    assert not all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())


def test_plugin_writes_the_branch_report_and_leaves_eval_alone(tmp_path):
    from trl import SFTTrainer

    evaluation = arithmetic_dataset(4, seed=5)
    cls = ftplugins.compose(SFTTrainer, [plugin], s3ft_judge="test_s3ft:odd_length", s3ft_max_new_tokens=8)
    trainer = cls(model=tiny_llama(), args=sft_args(tmp_path), train_dataset=arithmetic_dataset(8),
                  eval_dataset=evaluation, processing_class=tiny_tokenizer())
    report = json.loads((tmp_path / "s3ft_report.json").read_text())
    assert report == trainer.ftplugins_run.state["s3ft"]["report"]
    assert report["self"] + report["paraphrase"] + report["gold"] == 8 and report["judge"] == "test_s3ft:odd_length"
    assert os.path.isdir(report["cache"]) and report["cache"].startswith(str(tmp_path / "s3ft_cache"))
    assert trainer.eval_dataset["prompt"] == evaluation["prompt"]


# cache and resume


def test_interrupted_construction_resumes_with_only_the_missing_rows(tmp_path):
    model, tok, data = tiny_llama(), tiny_tokenizer(), arithmetic_dataset(10)
    expected, expected_report = build_dataset(model, tok, data, judge=odd_length, **FAST)

    first = Recorder(fail_at=9)  # the first chunk (4 rows) takes at most 8 judge calls
    with pytest.raises(KeyboardInterrupt):
        build_dataset(model, tok, data, judge=first, cache_dir=str(tmp_path), **FAST)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert sorted(p.name for p in folder.glob("chunk-*")) == ["chunk-000000.jsonl"]

    generated = []
    generate = model.generate
    model.generate = lambda *a, **k: generated.append(k["input_ids"].shape[0]) or generate(*a, **k)
    resumed = Recorder()
    try:
        out, report = build_dataset(model, tok, data, judge=resumed, cache_dir=str(tmp_path), **FAST)
    finally:
        del model.generate
    assert report["cached_rows"] == 4 and report["generated_rows"] == 6
    assert resumed.prompts == set(data["prompt"][4:])  # only the rows after the saved chunk
    assert generated[0] == 4 and 6 <= sum(generated) <= 12  # their answers (+ paraphrases of rejected ones)
    assert out.to_list() == expected.to_list()
    assert {k: report[k] for k in ("self", "paraphrase", "gold")} == \
        {k: expected_report[k] for k in ("self", "paraphrase", "gold")}

    again, report = build_dataset(model, tok, data, judge=Recorder(), cache_dir=str(tmp_path), **FAST)
    assert report["generated_rows"] == 0 and again.to_list() == expected.to_list()


def test_cache_key_follows_the_weights_the_judge_and_the_rows(tmp_path):
    tok, data = tiny_tokenizer(), arithmetic_dataset(4)

    def folder(model, judge=odd_length, rows=data):
        return build_dataset(model, tok, rows, judge=judge, cache_dir=str(tmp_path), **FAST)[1]["cache"]

    base = folder(tiny_llama(seed=0))
    assert folder(tiny_llama(seed=0)) == base
    assert folder(tiny_llama(seed=1)) != base
    assert folder(tiny_llama(seed=0), judge=never) != base
    assert folder(tiny_llama(seed=0), rows=arithmetic_dataset(4, seed=9)) != base


# judges


def test_exact_normalized_and_numeric_judges():
    assert exact_match(" The answer is 9. ", "The answer is 9.")
    assert not exact_match("the answer is 9.", "The answer is 9.")
    assert normalized_match("the  ANSWER is 9", "The answer is 9.")
    assert not normalized_match("The answer is 8.", "The answer is 9.")
    assert last_number("3+4=7, 7+2=9. The answer is 9.") == 9.0
    assert last_number("a total of 1,234.50 dollars") == 1234.5
    assert last_number("no numbers here") is None
    assert numeric_match("so it is 9.0", "3+4=7, 7+2=9. The answer is 9.")
    assert numeric_match("-3", "answer: -3.000")
    assert not numeric_match("The answer is 10.", "The answer is 9.")
    assert not numeric_match("no idea", "9")


TESTS = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}


def test_code_judge_passes_good_code_and_fails_bad_code():
    good = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert code_tests_pass(good, "", example=TESTS)
    assert not code_tests_pass("def add(a, b):\n    return a - b\n", "", example=TESTS)
    assert not code_tests_pass("def add(a, b) return", "", example=TESTS)  # syntax error
    assert code_tests_pass("def add(a, b):\n    return a + b", "", example={"tests": "assert add(1, 1) == 2"})


def test_code_judge_kills_an_infinite_loop_at_the_timeout():
    import time

    start = time.monotonic()
    assert not code_tests_pass("def add(a, b):\n    while True:\n        pass\n", "", example=TESTS, timeout=1.0)
    assert time.monotonic() - start < 60  # killed, not run to completion (a bound, not a timing: the machine may be busy)


def test_code_judge_blocks_the_network():
    attempts = [
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "import socket\nsocket.getaddrinfo('localhost', 80)",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9', timeout=1)",
    ]
    for attempt in attempts:
        assert not code_tests_pass(attempt, "", example={"tests": ""})
    raises_os_error = ("import socket\ntry:\n    socket.socket()\nexcept OSError as e:\n"
                       "    assert 'disabled' in str(e)\nelse:\n    raise SystemExit(1)\n")
    assert code_tests_pass(raises_os_error, "", example={"tests": ""})


def test_code_judge_runs_isolated_in_an_empty_folder_and_environment(monkeypatch):
    monkeypatch.setenv("S3FT_SECRET", "x")
    probe = ("import os, sys\nassert not os.listdir('.')\nassert 'S3FT_SECRET' not in os.environ\n"
             "assert sys.flags.isolated")
    assert code_tests_pass(probe, "", example={"tests": ""})


def test_code_judge_needs_the_tests_column():
    with pytest.raises(FtpluginsError, match="'tests' column"):
        code_tests_pass("x = 1", "", example={"prompt": "p"})
    judge = resolve_judge("code", tests_column="checks", timeout=5)
    assert judge("def add(a, b): return a + b", "", {"checks": "assert add(1, 2) == 3"})


def test_user_judge_by_dotted_path_and_its_errors():
    assert import_judge("test_s3ft:odd_length") is odd_length
    assert import_judge("test_s3ft.odd_length") is odd_length
    assert resolve_judge("operator:eq")("9", "9") is True and resolve_judge("operator.eq")("9", "8") is False
    with pytest.raises(FtpluginsError, match="cannot import module 'no_such_module_s3ft'"):
        import_judge("no_such_module_s3ft:judge")
    with pytest.raises(FtpluginsError, match="has no attribute 'nope'"):
        import_judge("test_s3ft:nope")
    with pytest.raises(FtpluginsError, match="not a callable"):
        import_judge("test_s3ft:not_a_function")
    with pytest.raises(FtpluginsError, match="neither a built-in judge"):
        import_judge("normalise")


def test_a_bad_judge_fails_before_the_trainer_is_built(tmp_path):
    from trl import SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [plugin], s3ft_judge="no_such_module_s3ft.judge")
    with pytest.raises(FtpluginsError, match="no_such_module_s3ft"):
        cls(model=tiny_llama(), args=sft_args(tmp_path), train_dataset=arithmetic_dataset(4),
            processing_class=tiny_tokenizer())


# formats and options


def test_conversational_rows_get_an_assistant_message_target():
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in arithmetic_dataset(4)]
    data = Dataset.from_list(rows)
    same, _ = build_dataset(tiny_llama(), tiny_tokenizer(), data, judge=never, **FAST)
    assert same.to_list() == rows
    out, report = build_dataset(tiny_llama(), tiny_tokenizer(), data, judge=always, **FAST)
    assert report["self"] == 4
    for row in out:
        assert [m["role"] for m in row["completion"]] == ["assistant"]
    bad = Dataset.from_list([{**rows[0], "completion": rows[0]["completion"] * 2}])
    with pytest.raises(DatasetColumnsError, match="exactly one assistant message"):
        build_dataset(tiny_llama(), tiny_tokenizer(), bad, judge=never, **FAST)


def test_rows_without_prompt_completion_are_refused():
    from datasets import Dataset

    with pytest.raises(DatasetColumnsError, match="prompt/completion"):
        build_dataset(tiny_llama(), tiny_tokenizer(), Dataset.from_list([{"text": "a"}]), judge=never, **FAST)


def test_paraphrase_request_fills_the_template_once():
    template = "Q: {prompt}\nGold: {completion}\nRephrase:"
    assert paraphrase_request(template, "x={completion}?", "def f(): return {1: 2}", False) == \
        "Q: x={completion}?\nGold: def f(): return {1: 2}\nRephrase:"
    messages = paraphrase_request(template, [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "2+2"}], "4", True)
    assert messages[0] == {"role": "system", "content": "be brief"} and messages[-1]["role"] == "user"
    assert "Gold: 4" in messages[-1]["content"]


def test_options_are_checked():
    from ftplugins.options import build_options

    with pytest.raises(OptionError, match="s3ft_paraphrase_template"):
        build_options([plugin], {"s3ft_paraphrase_template": "no placeholder"})
    with pytest.raises(OptionError, match="s3ft_batch_size"):
        build_options([plugin], {"s3ft_batch_size": 0})
    assert build_options([plugin], {"s3ft_paraphrase": False, "s3ft_paraphrase_template": "x"})


# distributed


@pytest.mark.slow
def test_two_processes_train_on_one_construction(tmp_path):
    """DDP (gloo, CPU): the main process builds and caches; the other rank reads the cache, generating nothing."""
    import subprocess
    import sys

    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s3ft_ddp_child.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    from test_distributed import free_port

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), child,
                           str(tmp_path)], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert main["report"]["generated_rows"] == 12 and other["report"]["generated_rows"] == 0
    assert other["report"]["cached_rows"] == 12 and main["input_ids"] == other["input_ids"]
    assert main["report"]["self"] + main["report"]["paraphrase"] > 0
