"""The perf pairs' pieces that need no timing: the hyper_adapter pair's plain side computes what the hypernetwork
side computes (so the pair measures the hypernetwork's cost alone), and ``--merge`` keeps earlier pairs with their
provenance."""

from __future__ import annotations

import json

import torch

from benchmarks.perf.pairs import HYPER_TASKS, fixed_task_adapters_class, markdown, merge_earlier


def test_fixed_task_adapters_start_as_the_hypernetworks_output_and_train_without_it():
    from transformers import AutoTokenizer

    from ftplugins.methods.hyper_adapter.model import HyperAdapterModel
    from ftplugins.methods.hyper_adapter.options import HyperAdapterOptions
    from ftplugins.testing import minilm_classifier, minilm_path

    options = HyperAdapterOptions(hyper_adapter_tasks=HYPER_TASKS)
    torch.manual_seed(0)
    hyper = HyperAdapterModel(minilm_classifier(num_labels=2), options.task_list(), options).eval()
    torch.manual_seed(0)
    fixed = fixed_task_adapters_class()(minilm_classifier(num_labels=2), options.task_list(), options).eval()
    assert not hasattr(fixed, "hypernetwork")
    batch = dict(AutoTokenizer.from_pretrained(str(minilm_path()))(["a wonderful film", "shares fell"],
                                                                    padding=True, return_tensors="pt"))
    with torch.no_grad():
        for task in range(2):
            assert torch.allclose(hyper.task_logits(task, **batch), fixed.task_logits(task, **batch), atol=1e-5)
    trainable = {n for n, p in fixed.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("fixed.", "heads.")) for n in trainable)
    fixed.train()
    out = fixed(**batch, task=torch.tensor([0, 1]), labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert all(fixed.fixed[t]["bert/encoder/layer/0/output/dense"]["up"].grad.abs().sum() > 0 for t in range(2))


def row(ms: float) -> dict:
    side = {"label": "x", "step_s": ms / 1e3, "step_s_repeats": [ms / 1e3], "peak_bytes": 2**20}
    return {"method": side, "plain": side, "step_ratio": 1.0, "memory_ratio": 1.0}


def test_merge_keeps_the_other_pairs_with_the_command_and_commit_that_measured_them(tmp_path):
    earlier = {"config": {"pairs": ["pet", "mean_teacher"]}, "pairs": {"pet": row(1), "mean_teacher": row(2)},
               "machine": {"command": "python -m benchmarks.perf.pairs --threads 1", "git_commit": "abc1234"}}
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(earlier))
    result = {"config": {"pairs": ["mean_teacher", "hyper_adapter"]},
              "pairs": {"mean_teacher": row(3), "hyper_adapter": row(4)}}
    merge_earlier(result, str(path))
    assert list(result["pairs"]) == ["pet", "mean_teacher", "hyper_adapter"]
    assert result["pairs"]["mean_teacher"]["method"]["step_s"] == 3 / 1e3  # re-measured: the new number
    assert [(m["pairs"], m["git_commit"]) for m in result["merged_from"]] == [(["pet"], "abc1234")]
    assert "`pet`: measured earlier, by `python -m benchmarks.perf.pairs --threads 1` at commit `abc1234`" in \
        markdown(result)
    again = {"config": {"pairs": ["hyper_adapter"]}, "pairs": {"hyper_adapter": row(5)}}
    path.write_text(json.dumps(result | {"machine": {"command": "c2", "git_commit": "def5678"}}))
    merge_earlier(again, str(path))  # a second merge keeps the first provenance
    assert [(m["pairs"], m["git_commit"]) for m in again["merged_from"]] == [
        (["mean_teacher"], "def5678"), (["pet"], "abc1234")]
