"""``ftplugins locft-locate`` (ftplugins.methods.locft.locate): the paper's sweep of tuning locations."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from ftplugins.errors import FtpluginsError
from ftplugins.methods.locft import locate as locating


def edit_recipe(tmp_path, plugins=("locft",)):
    from ftplugins.testing import arithmetic_dataset, save_tiny_llama

    save_tiny_llama(str(tmp_path / "model"))
    os.makedirs(tmp_path / "data")
    arithmetic_dataset(12).to_json(str(tmp_path / "data" / "train.jsonl"))
    config = dict(model_name_or_path=str(tmp_path / "model"), dataset_name=str(tmp_path / "data"),
                  output_dir=str(tmp_path / "unused"), max_steps=40, max_length=48, learning_rate=1e-2,
                  lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                  disable_tqdm=True, logging_steps=10, plugins=list(plugins), locft_batch_size=8,
                  locft_target_column="answer")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "recipe.yaml")


def test_the_candidates_are_every_down_projection_then_every_layer_by_depth(tmp_path):
    from transformers import AutoModelForCausalLM

    from ftplugins.testing import save_tiny_llama

    save_tiny_llama(str(tmp_path / "m"), num_hidden_layers=11)
    names = locating.candidate_modules(str(tmp_path / "m"))
    assert names[:3] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj",
                         "model.layers.2.mlp.down_proj"]  # by depth, not by name (10 after 1 would be)
    assert names[10:12] == ["model.layers.10.mlp.down_proj", "model.layers.0"] and names[-1] == "model.layers.10"
    assert len(names) == 22
    real = dict(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).named_modules())
    assert all(name in real for name in names)


def test_the_counterfact_score_is_the_harmonic_mean_of_the_parts_measured():
    assert locating.counterfact_score({"edit_success": 1.0, "paraphrase_success": 0.5,
                                       "neighbourhood_preservation": 1.0}) == pytest.approx(3 / (1 + 2 + 1))
    assert locating.counterfact_score({"edit_success": 0.5, "paraphrase_success": None,
                                       "neighbourhood_preservation": None}) == 0.5
    assert locating.counterfact_score({"edit_success": 1.0, "paraphrase_success": 0.0,
                                       "neighbourhood_preservation": 1.0}) == 0.0


def test_a_recipe_without_locft_or_with_edits_missing_columns_is_refused(tmp_path):
    with pytest.raises(FtpluginsError, match=r"does not use the locft plugin; add 'plugins: \[locft\]'"):
        locating.locate(edit_recipe(tmp_path, plugins=()), str(tmp_path / "out"), candidates=["model.layers.0"])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "1+1=?", "completion": "2"}) + "\n")
    config = yaml.safe_load(open(tmp_path / "recipe.yaml"))
    config["plugins"] = ["locft"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(FtpluginsError, match=r"need \['answer'\] \(the prompt and locft_target_column='answer'\)"):
        locating.locate(str(tmp_path / "recipe.yaml"), str(tmp_path / "out"), candidates=["model.layers.0"],
                        edits=str(tmp_path / "bad.jsonl"))
    with pytest.raises(FtpluginsError, match=r"no module 'model.layer.1.mlp.down_proj'; closest: "
                                             r"model.layers.1.mlp.down_proj"):
        locating.locate(str(tmp_path / "recipe.yaml"), str(tmp_path / "out"),
                        candidates=["model.layers.0", "model.layer.1.mlp.down_proj"])
    assert not os.path.exists(tmp_path / "out" / "candidates")  # refused before any training


@pytest.mark.slow
def test_locate_trains_each_candidate_keeps_the_best_and_resumes(tmp_path):
    """Each candidate trains only its module (the kept run differs from the base there alone), its stored score is
    the CounterFact score of that run's edits, the best is located, a rerun scores nothing again, and a rerun on
    other edits is refused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplugins.cli import main as cli_main
    from ftplugins.methods.locft import evaluate_edits

    recipe = edit_recipe(tmp_path)
    output = str(tmp_path / "locate")
    modules = ["model.layers.1.mlp.down_proj", "model.layers.0"]
    cli_main(["locft-locate", "--config", recipe, "-o", output, "--candidates", ",".join(modules), "--rows", "8",
              "--keep-runs"])
    summary = json.loads(open(os.path.join(output, "locate.json")).read())
    assert [r["module"] for r in summary["results"]] == modules and summary["edits"] == 8
    scores = [r["score"] for r in summary["results"]]
    assert max(scores) > 0  # the edits were learnt somewhere: the score is not a constant
    assert summary["located"] == modules[scores.index(max(scores))]  # ties: the earlier candidate

    import datasets

    edits = datasets.load_dataset("json", data_files=os.path.join(output, "edits", "train.jsonl"), split="train")
    base = dict(AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).named_parameters())
    for index, module in enumerate(modules):
        run = os.path.join(output, "candidates", f"{index:02d}", "run")
        trained = AutoModelForCausalLM.from_pretrained(run)
        changed = {name for name, p in trained.named_parameters() if not torch.equal(p, base[name])}
        assert changed and all(name.startswith(module + ".") for name in changed), (module, changed)
        again = evaluate_edits(trained, AutoTokenizer.from_pretrained(run), edits, target_column="answer")
        assert summary["results"][index]["edit_success"] == again["edit_success"]
        assert summary["results"][index]["score"] == locating.counterfact_score(again)

    result_file = os.path.join(output, "candidates", "01", "result.json")
    before = os.stat(result_file).st_mtime_ns
    lines = []
    again = locating.locate(recipe, output, candidates=modules, rows=8, log=lines.append)
    assert lines == [f"{m}: done before (score {s:.4f})" for m, s in zip(modules, scores)]
    assert os.stat(result_file).st_mtime_ns == before and again["located"] == summary["located"]
    with pytest.raises(FtpluginsError, match=r"another recipe, data, seed or setting \(edits, edits_sha changed\)"):
        locating.locate(recipe, output, candidates=modules, rows=6, log=lines.append)
