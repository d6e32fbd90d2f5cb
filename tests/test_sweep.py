"""Sample-efficiency sweep (ftplugins.tools.sweep): nested seeded subsets, a tiny real sweep, resuming it."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from ftplugins.errors import FtpluginsError
from ftplugins.tools import subsets, sweep


def test_fraction_subsets_are_nested_seeded_and_sized():
    chosen = subsets.fraction_subsets(200, [0.01, 0.05, 0.25, 1.0], seed=3)
    sizes = [len(chosen[f]) for f in (0.01, 0.05, 0.25, 1.0)]
    assert sizes == [2, 10, 50, 200]
    assert set(chosen[0.01]) <= set(chosen[0.05]) <= set(chosen[0.25]) <= set(chosen[1.0]) == set(range(200))
    assert chosen == subsets.fraction_subsets(200, [0.01, 0.05, 0.25, 1.0], seed=3)  # the same in every process
    assert chosen[0.25] != subsets.fraction_subsets(200, [0.25], seed=4)[0.25]  # the seed draws the rows
    assert subsets.fraction_subsets(200, [0.25], seed=3)[0.25] == chosen[0.25]  # a point does not depend on others


def test_kshot_subsets_take_k_of_every_class_nested():
    labels = ["a"] * 10 + ["b"] * 6 + ["c"] * 8
    chosen = subsets.kshot_subsets(labels, [1, 3, 5], seed=0)
    for k, rows in chosen.items():
        assert sorted(labels[i] for i in rows) == sorted(["a", "b", "c"] * k)
    assert set(chosen[1]) <= set(chosen[3]) <= set(chosen[5])
    shuffled = list(reversed(labels))  # the draw per class does not depend on which class comes first
    assert {labels[i] for i in chosen[1]} == {shuffled[i] for i in subsets.kshot_subsets(shuffled, [1], seed=0)[1]}
    with pytest.raises(FtpluginsError, match=r"--k-shot 7: the classes \{'b': 6\}"):
        subsets.kshot_subsets(labels, [7])
    with pytest.raises(FtpluginsError, match="at least two classes"):
        subsets.kshot_subsets(["a"] * 4, [1])


@pytest.mark.parametrize("text, message", [("0,0.5", "--train-fraction"), ("0.5,2", "--train-fraction"),
                                           ("a", "--train-fraction")])
def test_bad_fractions_are_one_line(text, message):
    with pytest.raises(FtpluginsError, match=message):
        subsets.parse_fractions(text)


def test_bad_shots_and_missing_scores_are_one_line():
    with pytest.raises(FtpluginsError, match="--k-shot '0,2'"):
        subsets.parse_shots("0,2")
    with pytest.raises(FtpluginsError, match="needs a score for each run"):
        sweep.Scorer().check()
    with pytest.raises(FtpluginsError, match="--score-file needs --score-key"):
        sweep.Scorer(score_file="mbpp_eval.json").check()
    with pytest.raises(FtpluginsError, match="no column 'label'"):
        sweep.plan([{"text": "x"}] * 4, shots=[1])


def test_the_point_recipe_keeps_the_users_keys_and_replaces_data_output_and_eval():
    config = {"model_name_or_path": "m", "dataset_name": "d", "dataset_config": "c", "dataset_test_split": "test",
              "eval_strategy": "steps", "max_steps": 7, "plugins": ["lift"], "lift_density": 0.1}
    recipe = sweep.point_recipe(config, "/s/data", "/s/run")
    assert recipe == {"model_name_or_path": "m", "dataset_name": "/s/data", "eval_strategy": "no", "max_steps": 7,
                      "plugins": ["lift"], "lift_density": 0.1, "dataset_train_split": "train", "output_dir": "/s/run"}


# --- a tiny real sweep -------------------------------------------------------------------------------------------


def tiny_recipe(tmp_path):
    from ftplugins.testing import arithmetic_dataset, save_tiny_llama

    save_tiny_llama(str(tmp_path / "model"))
    rows = arithmetic_dataset(8)
    os.makedirs(tmp_path / "data")
    rows.to_json(str(tmp_path / "data" / "train.jsonl"))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n"
                               for r in arithmetic_dataset(4, seed=1)))
    config = dict(model_name_or_path=str(tmp_path / "model"), dataset_name=str(tmp_path / "data"),
                  output_dir=str(tmp_path / "unused"), max_steps=2, per_device_train_batch_size=2, max_length=48,
                  learning_rate=1e-2, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                  disable_tqdm=True, logging_steps=1)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "recipe.yaml"), str(heldout)


def point_rows(output, name):
    with open(os.path.join(output, "points", name, "data", "train.jsonl")) as handle:
        return [json.loads(line)["prompt"] for line in handle]


@pytest.mark.slow
def test_a_tiny_sweep_trains_nested_points_and_resumes_only_what_did_not_finish(tmp_path):
    from ftplugins.cli import main as cli_main

    recipe, heldout = tiny_recipe(tmp_path)
    output = str(tmp_path / "sweep")
    command = ["sweep", "--config", recipe, "--train-fraction", "0.25,1", "--heldout", heldout, "-o", output]
    cli_main(command)
    summary = json.loads(open(os.path.join(output, "sweep.json")).read())
    assert [(p["point"], p["rows"]) for p in summary["points"]] == [("fraction-0.25", 2), ("fraction-1", 8)]
    assert all(p["score"] < 0 for p in summary["points"])  # minus a token loss
    assert set(point_rows(output, "fraction-0.25")) < set(point_rows(output, "fraction-1"))  # nested
    assert os.path.getsize(os.path.join(output, "sweep.png")) > 0
    small_model = os.path.join(output, "points", "fraction-0.25", "run", "model.safetensors")
    first_small = os.stat(small_model).st_mtime_ns

    # A crash while the last point trained: its result was never written, a half run folder is left.
    os.remove(os.path.join(output, "points", "fraction-1", "result.json"))
    lines = []
    summary_again = sweep.run_sweep(recipe, output, sweep.Scorer(heldout=heldout), fractions=[0.25, 1.0],
                                    log=lines.append)
    assert lines[0].startswith("fraction-0.25: 2 rows, done before")  # not trained again
    assert os.stat(small_model).st_mtime_ns == first_small
    assert any(line.startswith("fraction-1: training on 8 rows") for line in lines)
    assert os.path.isfile(os.path.join(output, "points", "fraction-1", "result.json"))
    assert summary_again["points"][0] == summary["points"][0]
    assert summary_again["points"][1]["score"] == pytest.approx(summary["points"][1]["score"], abs=1e-4)

    with pytest.raises(FtpluginsError, match="seed changed"):
        sweep.run_sweep(recipe, output, sweep.Scorer(heldout=heldout), fractions=[0.25, 1.0], seed=1)


def test_a_failing_point_names_its_log_and_keeps_finished_points(tmp_path):
    recipe, heldout = tiny_recipe(tmp_path)
    config = yaml.safe_load(open(recipe))
    config["model_name_or_path"] = str(tmp_path / "no-such-model")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(FtpluginsError, match=r"training failed \(exit \d+\) for .*fraction-1.*train.log"):
        sweep.run_sweep(str(tmp_path / "broken.yaml"), str(tmp_path / "out"), sweep.Scorer(heldout=heldout),
                        fractions=[1.0], log=lambda _line: None)
    assert not os.path.exists(tmp_path / "out" / "points" / "fraction-1" / "result.json")
