"""fewshot_prefix (k in-context examples from a disjoint pool) and the weak->gold sequential SFT recipe."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cpu_args

import ftplugins
from ftplugins.errors import DatasetColumnsError, FtpluginsError, OptionError
from ftplugins.methods.fewshot_prefix.prefixing import SHOTS_COLUMN, example_key
from ftplugins.methods.fewshot_prefix.weak_to_gold import label_cost, train_weak_then_gold
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

SEP = "\n\n"


def sft_args(tmp_path, **overrides):
    from trl import SFTConfig

    values = dict(max_length=256, per_device_train_batch_size=4)
    values.update(overrides)
    return cpu_args(SFTConfig, tmp_path, **values)


def make_run(tmp_path, seed=0, **options):
    from ftplugins.context import Run
    from ftplugins.options import build_options
    from ftplugins.registry import load

    plugin = load("fewshot_prefix")
    return Run(plugins=[plugin], options=build_options([plugin], options), args=sft_args(tmp_path, seed=seed))


def transform(run, dataset, split):
    return run.call("transform_dataset", dataset=dataset, split=split)


def doubled(n):
    """n rows, each present twice (duplicates must not leak a pool example into the targets)."""
    from datasets import concatenate_datasets

    data = arithmetic_dataset(n, seed=3)
    return concatenate_datasets([data, data])


def original_prompt(row):
    return row["prompt"].split(SEP)[-1]


def check_prefixes(rows, pool, k):
    for row in rows:
        shots = row[SHOTS_COLUMN]
        assert len(shots) == len(set(shots)) == k
        expected = SEP.join([*(pool[s]["prompt"] + pool[s]["completion"] for s in shots), original_prompt(row)])
        assert row["prompt"] == expected


# invariants of the dataset transform


def test_pool_is_disjoint_from_the_training_targets(tmp_path):
    data = doubled(40)
    run = make_run(tmp_path, fewshot_prefix_k=3, fewshot_prefix_pool_size=10)
    train = transform(run, data, "train").to_list()
    pool = run.state["fewshot_prefix"]["pool"]
    assert len(pool) == 10
    pool_keys = {example_key(p) for p in pool}
    targets = {example_key({"prompt": original_prompt(r), "completion": r["completion"]}) for r in train}
    assert not pool_keys & targets
    # only the pool rows and their duplicates left the train split
    kept = [example_key(r) for r in data if example_key(r) not in pool_keys]
    assert len(train) == len(kept)


def test_every_prompt_has_k_distinct_pool_examples_reshuffled_per_row(tmp_path):
    run = make_run(tmp_path, fewshot_prefix_k=4, fewshot_prefix_pool_size=12)
    train = transform(run, arithmetic_dataset(40), "train").to_list()
    pool = run.state["fewshot_prefix"]["pool"]
    check_prefixes(train, pool, 4)
    assert len({tuple(r[SHOTS_COLUMN]) for r in train}) > len(train) // 2  # not one prompt for everyone
    assert [r["completion"] for r in train] == [r["completion"] for r in arithmetic_dataset(40)
                                               if example_key(r) not in {example_key(p) for p in pool}]


def test_eval_rows_are_prefixed_from_the_same_pool_and_kept_whole(tmp_path):
    run = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_size=8)
    transform(run, arithmetic_dataset(30), "train")
    pool = run.state["fewshot_prefix"]["pool"]
    evaluation = arithmetic_dataset(10, seed=7)
    rows = transform(run, evaluation, "eval").to_list()
    assert [original_prompt(r) for r in rows] == evaluation["prompt"]
    check_prefixes(rows, pool, 2)


def test_deterministic_given_the_seed(tmp_path):
    def build(seed):
        run = make_run(tmp_path, seed=seed, fewshot_prefix_k=3, fewshot_prefix_pool_size=8)
        return transform(run, arithmetic_dataset(30), "train").to_list(), \
            transform(run, arithmetic_dataset(6, seed=9), "eval").to_list()

    assert build(0) == build(0)
    assert build(0) != build(1)


def test_k0_leaves_the_rows_untouched(tmp_path):
    data = arithmetic_dataset(20)
    run = make_run(tmp_path, fewshot_prefix_k=0)
    assert transform(run, data, "train") is data
    assert transform(run, data, "eval") is data


def test_k0_trains_exactly_like_plain_sft(tmp_path):
    from trl import SFTTrainer

    def build(cls):
        return cls(model=tiny_llama(), args=sft_args(tmp_path / cls.__name__, max_steps=2),
                   train_dataset=arithmetic_dataset(16), eval_dataset=arithmetic_dataset(4, seed=5),
                   processing_class=tiny_tokenizer())

    plain = build(SFTTrainer)
    mine = build(ftplugins.compose(SFTTrainer, ["fewshot_prefix"], fewshot_prefix_k=0))
    assert mine.train_dataset.to_list() == plain.train_dataset.to_list()
    assert mine.eval_dataset.to_list() == plain.eval_dataset.to_list()
    losses = []
    for trainer in (plain, mine):
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert losses[0] == losses[1]


def test_a_separate_pool_file(tmp_path):
    pool_rows = arithmetic_dataset(6, seed=11).to_list()
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    data = arithmetic_dataset(20)
    from datasets import concatenate_datasets

    data_with_pool_row = concatenate_datasets([data, arithmetic_dataset(6, seed=11).select([0])])
    run = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_path=str(path))
    train = transform(run, data_with_pool_row, "train").to_list()
    pool = run.state["fewshot_prefix"]["pool"]
    assert [example_key(p) for p in pool] == [example_key(r) for r in pool_rows]
    # nothing held out of train; the rows equal to a pool example (the appended one at least) dropped
    pool_keys = {example_key(p) for p in pool}
    expected = [r["completion"] for r in data_with_pool_row if example_key(r) not in pool_keys]
    assert [r["completion"] for r in train] == expected and len(expected) < len(data_with_pool_row)
    check_prefixes(train, pool, 2)
    eval_only = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_path=str(path))
    check_prefixes(transform(eval_only, arithmetic_dataset(3, seed=4), "eval").to_list(), pool, 2)


def test_a_lead_and_a_query_separator_lay_out_the_prompt(tmp_path):
    """``LEAD shot SEP shot QSEP prompt``: a model taught to read examples under a tag and a query marker (the
    quality harness's decoder: ``e:abc>cba;dog>god|xyz=``) is prompted in its own layout; unset, the layout is
    the plain one, byte for byte."""
    data = arithmetic_dataset(20)
    run = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_size=6, fewshot_prefix_separator=";",
                   fewshot_prefix_lead="e:", fewshot_prefix_query_separator="|")
    train = transform(run, data, "train").to_list()
    pool = run.state["fewshot_prefix"]["pool"]
    plain = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_size=6, fewshot_prefix_separator=";")
    plain_train = transform(plain, data, "train").to_list()
    for row, plain_row in zip(train, plain_train):
        a, b = (pool[s]["prompt"] + pool[s]["completion"] for s in row[SHOTS_COLUMN])
        query = plain_row["prompt"].split(";")[-1]
        assert row["prompt"] == f"e:{a};{b}|{query}" and plain_row["prompt"] == f"{a};{b};{query}"
        assert row["completion"] == plain_row["completion"]
    only_lead = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_size=6, fewshot_prefix_lead="Add.\n")
    first = transform(only_lead, data, "train")[0]
    assert first["prompt"].startswith("Add.\n") and first["prompt"].count(SEP) == 2  # the query keeps SEP
    refused = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_size=6, fewshot_prefix_lead="e:")
    with pytest.raises(FtpluginsError, match="lay out text prompts; in a conversation"):
        transform(refused, conversational(data), "train")


def conversational(dataset):
    return dataset.map(lambda r: {"prompt": [{"role": "system", "content": "Add."},
                                             {"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["completion"]}]})


def test_conversational_shots_become_earlier_turns(tmp_path):
    run = make_run(tmp_path, fewshot_prefix_k=2, fewshot_prefix_pool_size=6)
    train = transform(run, conversational(arithmetic_dataset(20)), "train").to_list()
    pool = run.state["fewshot_prefix"]["pool"]
    for row in train:
        s1, s2 = (pool[s] for s in row[SHOTS_COLUMN])
        roles = [m["role"] for m in row["prompt"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert row["prompt"][1:5] == [s1["prompt"][1], s1["completion"][0], s2["prompt"][1], s2["completion"][0]]


# through the trainer


def test_training_run_through_compose_with_eval(tmp_path):
    from trl import SFTTrainer

    cls = ftplugins.compose(SFTTrainer, ["fewshot_prefix"], fewshot_prefix_k=2, fewshot_prefix_pool_size=8)
    plain_eval = SFTTrainer(model=tiny_llama(), args=sft_args(tmp_path / "p"), train_dataset=arithmetic_dataset(4),
                            eval_dataset=arithmetic_dataset(4, seed=5), processing_class=tiny_tokenizer())
    trainer = cls(model=tiny_llama(), args=sft_args(tmp_path, max_steps=2), train_dataset=arithmetic_dataset(24),
                  eval_dataset=arithmetic_dataset(4, seed=5), processing_class=tiny_tokenizer())
    assert len(trainer.train_dataset) <= 24 - 8
    # eval prompts got longer, eval targets stayed the same (shots are context, not targets)
    for mine, plain in zip(trainer.eval_dataset, plain_eval.eval_dataset):
        assert len(mine["input_ids"]) > len(plain["input_ids"])
        targets = [t for t in mine["labels"] if t != -100]
        assert targets == [t for t in plain["labels"] if t != -100] and len(targets) < len(mine["labels"]) // 2
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))


# user errors


@pytest.mark.parametrize(
    "options",
    [{"fewshot_prefix_k": -1}, {"fewshot_prefix_k": 8, "fewshot_prefix_pool_size": 4},
     {"fewshot_prefix_pool_size": -2}],
)
def test_bad_options_are_refused(options):
    from trl import SFTTrainer

    with pytest.raises(OptionError, match="fewshot_prefix_"):
        ftplugins.compose(SFTTrainer, ["fewshot_prefix"], **options)


def test_user_errors(tmp_path):
    from datasets import Dataset
    from trl import SFTTrainer

    with pytest.raises(FtpluginsError, match="completion_only_loss"):
        ftplugins.compose(SFTTrainer, ["fewshot_prefix"])(
            model=tiny_llama(), args=sft_args(tmp_path, completion_only_loss=False),
            train_dataset=arithmetic_dataset(40), processing_class=tiny_tokenizer())
    with pytest.raises(DatasetColumnsError, match="prompt/completion"):
        transform(make_run(tmp_path), Dataset.from_dict({"text": ["a"] * 40}), "train")
    with pytest.raises(FtpluginsError, match="no train split"):
        transform(make_run(tmp_path), arithmetic_dataset(4), "eval")
    with pytest.raises(FtpluginsError, match="holds out every row"):
        transform(make_run(tmp_path), arithmetic_dataset(10), "train")
    with pytest.raises(FtpluginsError, match="does not exist"):
        transform(make_run(tmp_path, fewshot_prefix_pool_path=str(tmp_path / "nope.jsonl")), arithmetic_dataset(4),
                  "train")


# weak -> gold sequential SFT


def adam_steps(trainer):
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {int(s["step"]) for s in optimizer.state.values()}


def test_weak_then_gold_continues_the_weights_with_a_fresh_optimizer(tmp_path):
    from trl import SFTTrainer

    trainers, seen = [], {}
    initial = tiny_llama()
    start = {k: v.clone() for k, v in initial.state_dict().items()}

    def factory(model, train_dataset, stage):
        seen[stage] = {k: v.clone() for k, v in model.state_dict().items()}
        trainers.append(SFTTrainer(model=model, args=sft_args(tmp_path / stage, max_steps=3 if stage == "weak" else 2,
                                                              learning_rate=1e-2),
                                   train_dataset=train_dataset, processing_class=tiny_tokenizer()))
        return trainers[-1]

    report = train_weak_then_gold(factory, initial, arithmetic_dataset(12), arithmetic_dataset(6, seed=1),
                                  weak_cost=1.0, gold_cost=10.0, report_path=str(tmp_path / "report.json"))
    weak, gold = trainers
    after_weak = seen["gold"]
    # stage 2 starts from the stage-1 weights ...
    assert any(not torch.equal(start[k], after_weak[k]) for k in start)
    assert all(torch.equal(after_weak[k], v) for k, v in seen["gold"].items())
    # ... with a fresh optimizer: its Adam step count is its own (2), not 3 + 2
    assert gold.optimizer is not weak.optimizer
    assert adam_steps(weak) == {3} and adam_steps(gold) == {2}
    assert report["model"] is gold.model
    assert [(s["stage"], s["examples"], s["steps"]) for s in report["stages"]] == [("weak", 12, 3), ("gold", 6, 2)]
    assert report["cost"] == {"weak": 12.0, "gold": 60.0, "total": 72.0}
    assert json.loads((tmp_path / "report.json").read_text())["cost"]["total"] == 72.0


def test_weak_then_gold_refuses_a_reused_trainer_and_counts_skipped_stages(tmp_path):
    from trl import SFTTrainer

    shared = {}

    def reuse(model, train_dataset, stage):
        if "t" not in shared:
            shared["t"] = SFTTrainer(model=model, args=sft_args(tmp_path, max_steps=1), train_dataset=train_dataset,
                                     processing_class=tiny_tokenizer())
        return shared["t"]

    with pytest.raises(FtpluginsError, match="fresh optimizer"):
        train_weak_then_gold(reuse, tiny_llama(), arithmetic_dataset(4), arithmetic_dataset(4, seed=1))
    shared.clear()
    report = train_weak_then_gold(reuse, tiny_llama(), None, arithmetic_dataset(4), weak_cost=1, gold_cost=3)
    assert [s["stage"] for s in report["stages"]] == ["gold"] and report["cost"]["total"] == 12
    assert label_cost(5, 2, 0.5, 4.0) == {"weak": 2.5, "gold": 8.0, "total": 10.5}
    with pytest.raises(FtpluginsError, match="unit costs"):
        label_cost(1, 1, -1.0, 1.0)
