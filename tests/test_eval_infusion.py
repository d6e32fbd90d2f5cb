"""Knowledge infusion (FineTuneBench format): loading both layouts, accuracy per question kind with s3ft's judges,
the training rows, bad input as one line, and the post_train plugin."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from conftest import cpu_args
from ftplugins.errors import FtpluginsError
from ftplugins.eval.infusion import KINDS, TEMPLATE, TINY, auto_judge, evaluate_infusion, load_facts, training_rows
from ftplugins.testing import tiny_llama, tiny_tokenizer


class AnsweringLM(torch.nn.Module):
    """A stand-in causal LM that answers the questions in ``answers`` (prompt text -> response) and says
    "I don't know" to the rest, followed by a second line the harness must ignore."""

    def __init__(self, tokenizer, answers):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answers = tokenizer, answers

    def generate(self, input_ids, attention_mask, num_return_sequences, **kwargs):
        outs = []
        for row_ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(row_ids[mask.bool()], skip_special_tokens=True)
            reply = next((a for q, a in self.answers.items() if q in prompt), "I don't know")
            outs.append(row_ids.tolist() + self.tokenizer(f" {reply}\nQuestion: more", add_special_tokens=False)[
                "input_ids"])
        width = max(map(len, outs))
        return torch.tensor([o + [self.tokenizer.pad_token_id] * (width - len(o)) for o in outs])


def test_the_shipped_set_has_every_kind_for_every_fact():
    facts = load_facts(TINY)
    assert len(facts) == 25
    assert {k: sum(f["kind"] == k for f in facts) for k in KINDS} == dict.fromkeys(KINDS, 5)


def test_one_file_per_kind_reads_like_one_file_with_a_kind_column(tmp_path):
    facts = load_facts(TINY)
    sources = []
    for kind in KINDS:
        path = tmp_path / f"{kind}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "prompt", "answer"])
            writer.writerows([f["id"], f["prompt"], f["answer"]] for f in facts if f["kind"] == kind)
        sources.append(f"{kind}={path}")
    by_kind = load_facts(sources)
    key = lambda f: (f["id"], f["kind"], f["prompt"], f["answer"])  # noqa: E731
    assert sorted(map(key, by_kind)) == sorted(map(key, facts))
    assert load_facts([f"date_changed={tmp_path / 'date_shifted.csv'}"])[0]["kind"] == "date_shifted"  # alias


def test_auto_judge_is_numeric_for_numbers_and_normalized_for_names():
    assert auto_judge("It is 48,210.", "48210") and not auto_judge("48211", "48210")
    assert auto_judge("mira  Telund.", "Mira Telund") and not auto_judge("Mira Telund, a physicist", "Mira Telund")


def test_accuracy_per_kind_counts_exactly_what_the_model_knows():
    tokenizer, facts = tiny_tokenizer(), load_facts(TINY)
    knows = {f["prompt"]: f["answer"] for f in facts if f["kind"] in ("memorization", "rephrased")}
    knows[facts[2]["prompt"]] = facts[2]["answer"].upper() + "!"  # one date_shifted answer, judged normalized
    knows[facts[6]["prompt"]] = "about 48,210 people"  # fact1 rephrased, judged numerically
    result = evaluate_infusion(AnsweringLM(tokenizer, knows), tokenizer, facts, batch_size=4)
    assert result["metrics"] == {"accuracy/memorization": 1.0, "accuracy/rephrased": 1.0,
                                 "accuracy/date_shifted": 0.2, "accuracy/secondary": 0.0,
                                 "accuracy/comparison": 0.0, "accuracy": 11 / 25}
    assert result["counts"] == dict.fromkeys(KINDS, 5)
    assert all("\n" not in q["response"] for q in result["questions"])  # the first line only
    strict = evaluate_infusion(AnsweringLM(tokenizer, knows), tokenizer, facts, judge="exact")
    assert strict["metrics"]["accuracy/date_shifted"] == 0.0  # the upper-cased answer fails exact match


def test_training_rows_are_the_memorization_questions_in_the_evaluation_format():
    facts = load_facts(TINY)
    rows = training_rows(facts)
    assert len(rows) == 5
    assert rows[0] == {"prompt": TEMPLATE.replace("{prompt}", facts[0]["prompt"]), "completion": " Mira Telund"}
    with pytest.raises(FtpluginsError, match="no rows of kind\\(s\\) nope"):
        training_rows(facts, ["nope"])


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "q", "answer": "a"}], "lacks the column\\(s\\) kind"),
    ([{"prompt": "q", "kind": "rephrased"}], "lacks the column\\(s\\) answer"),
    ([], "holds no rows"),
])
def test_bad_data_is_one_clear_error(rows, message):
    with pytest.raises(FtpluginsError, match=message):
        load_facts(rows)


def test_the_cli_reports_a_missing_column_in_one_line(tmp_path):
    bad = tmp_path / "facts.csv"
    bad.write_text("id,question,answer\n1,Who?,Me\n")
    proc = subprocess.run([sys.executable, "-m", "ftplugins.eval", "infusion", "--model", str(tmp_path), "--data",
                           str(bad)], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "lacks the column(s) prompt, kind" in lines[0], proc.stderr


def test_the_cli_writes_training_rows_and_evaluates(tiny_model_dir, tmp_path):
    from ftplugins.cli import main

    main(["eval", "infusion-train", str(tmp_path / "train.jsonl")])
    rows = [json.loads(line) for line in open(tmp_path / "train.jsonl")]
    assert rows == training_rows(load_facts(TINY))
    main(["eval", "infusion", "--model", tiny_model_dir, "--max_new_tokens", "4", "--out", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["metrics"]) == {f"accuracy/{k}" for k in KINDS} | {"accuracy"}


def test_plugin_logs_accuracy_per_kind_after_training(tmp_path):
    import ftplugins
    from datasets import Dataset
    from ftplugins.eval.infusion_plugin import plugin
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [plugin], infusion_eval_data=TINY, infusion_eval_max_new_tokens=4)
    trainer = cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path, max_steps=1),
                  train_dataset=Dataset.from_list(training_rows(load_facts(TINY))), processing_class=tiny_tokenizer())
    trainer.train()
    logged = [e for e in trainer.state.log_history if "infusion/accuracy" in e]
    assert len(logged) == 1 and {f"infusion/accuracy/{k}" for k in KINDS} <= set(logged[0])
    report = json.loads((tmp_path / "infusion_eval.json").read_text())
    assert report["metrics"]["accuracy"] == logged[0]["infusion/accuracy"] and len(report["questions"]) == 25
    with pytest.raises(FtpluginsError, match="--infusion_eval_data"):
        ftplugins.compose(SFTTrainer, [plugin])(model=tiny_llama(), processing_class=tiny_tokenizer())
    with pytest.raises(FtpluginsError, match="infusion_eval_judge='no_such_mod.judge'"):
        ftplugins.compose(SFTTrainer, [plugin], infusion_eval_data=TINY, infusion_eval_judge="no_such_mod.judge")(
            model=tiny_llama(), processing_class=tiny_tokenizer())
