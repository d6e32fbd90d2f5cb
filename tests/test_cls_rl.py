"""CLS-RL: the rewards of the spec's table, the prompt builder, and GRPO training with the rewards logged."""

from __future__ import annotations

import json

import pytest

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.cls_rl import plugin
from ftplugins.methods.cls_rl import rewards as R
from ftplugins.methods.cls_rl.options import ClsRlOptions
from ftplugins.methods.cls_rl.prompts import build_prompts

accuracy = R.AccuracyReward("label")
exact = R.ExactAnswerReward("label")



def think(reason, answer):
    return f"<think>{reason}</think><answer>{answer}</answer>"


def test_format_reward_full_match_dotall():
    completions = [
        think("it purrs", "cat"),
        "<think>line one\nline two</think>\n  <answer>\ncat\n</answer>",  # DOTALL, whitespace between the tags
        "<answer>cat</answer>",  # no reasoning
        think("x", "cat") + " trailing",  # not a full match
        "I think " + think("x", "cat"),
        "<think>x</think><answer>cat",  # unclosed answer
    ]
    assert R.format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_accuracy_reward_strips_and_ignores_case():
    completions = [think("", "cat"), think("", "  Cat \n"), think("", "dog"), "CAT", think("cat", "")]
    assert accuracy(completions, label=["cat", "cat", "cat", " cat ", "cat"]) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_a_well_formed_correct_answer_scores_two_and_each_reward_is_zero_or_one():
    completions = [think("furry", "cat"), think("furry", "dog"), "cat", "<think>no answer</think>"]
    labels = ["cat"] * 4
    total = [f + a for f, a in zip(R.format_reward(completions), accuracy(completions, label=labels))]
    assert total == [2.0, 1.0, 1.0, 0.0]


def test_numeric_labels_accept_the_same_number_written_otherwise():
    pytest.importorskip("math_verify")
    completions = [think("", "3.0"), think("", "1/2"), think("", "4"), think("", "three")]
    assert accuracy(completions, label=["3", "0.5", "3", "3"]) == [1.0, 1.0, 0.0, 0.0]


def test_numeric_comparison_without_math_verify(monkeypatch):
    real = R.importlib.util.find_spec
    monkeypatch.setattr(R.importlib.util, "find_spec", lambda name: None if name == "math_verify" else real(name))
    completions = [think("", "3.0"), think("", "1/2"), think("", "4"), think("", "x")]
    assert accuracy(completions, label=["3", "0.5", "3", "3"]) == [1.0, 0.0, 0.0, 0.0]


def test_no_thinking_reward_is_an_exact_match_of_the_stripped_label():
    completions = ["cat", "Cat", " cat", "cat ", "<answer>cat</answer>", "cat"]
    assert exact(completions, label=["cat", "cat", "cat", "cat", "cat", " cat\n"]) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_conversational_completions_are_read_and_other_shapes_refused():
    conversational = [[{"role": "assistant", "content": think("", "cat")}]]
    assert R.format_reward(conversational) == [1.0]
    assert accuracy(conversational, label=["cat"]) == [1.0]
    with pytest.raises(FtpluginsError, match="completion 0 is dict.*expected a string"):
        R.format_reward([{"content": "cat"}])
    with pytest.raises(FtpluginsError, match="completion 1 is list"):
        exact(["cat", [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]], label=["a", "b"])


def test_a_reward_without_the_label_column_names_it():
    with pytest.raises(FtpluginsError, match="label column 'label'.*\\['category'\\]"):
        accuracy(["cat"], category=["cat"], prompts=["p"])


def options(**values):
    return ClsRlOptions(**values)


def rows():
    from datasets import Dataset

    return Dataset.from_list([{"text": f"text {i}", "label": ["cat", "dog", "bird"][i % 3]} for i in range(12)])


def test_prompts_list_every_class_shuffled_per_example_and_reproducibly():
    built = build_prompts(rows(), options(), conversational=False)
    listed = [p.split("list [")[1].split("]")[0].split(", ") for p in built["prompt"]]
    assert all(sorted(names) == ["bird", "cat", "dog"] for names in listed)
    assert len({tuple(names) for names in listed}) > 1  # shuffled per example
    assert built["prompt"] == build_prompts(rows(), options(), conversational=False)["prompt"]
    assert built["prompt"][0].startswith("text 0\nWhich category")
    assert built["prompt"][0].endswith("<answer> </answer> tags.")
    still = build_prompts(rows(), options(cls_rl_shuffle=False), conversational=False)["prompt"]
    assert all("[bird, cat, dog]" in p for p in still)


def test_no_think_prompts_ask_for_the_answer_directly_and_chat_prompts_are_messages():
    built = build_prompts(rows(), options(cls_rl_mode="no_think"), conversational=True)
    message = built["prompt"][0]
    assert message[0]["role"] == "user" and message[0]["content"].endswith("Please directly output the answer.")


def test_integer_labels_become_class_names():
    from datasets import ClassLabel, Dataset, Features, Value

    data = Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]},
                             features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))
    assert build_prompts(data, options(), conversational=False)["label"] == ["pos", "neg"]
    plain = Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]})
    assert build_prompts(plain, options(cls_rl_labels=["neg", "pos"]), conversational=False)["label"] == ["pos", "neg"]


@pytest.mark.parametrize("data,opts,message", [
    ({"text": ["a"], "category": ["cat"]}, {}, "no label column 'label'.*category"),
    ({"sentence": ["a"], "label": ["cat"]}, {"cls_rl_labels": ["cat", "dog"]}, "no text column 'text'"),
    ({"text": ["a", "b"], "label": ["cat", "cow"]}, {"cls_rl_labels": ["cat", "dog"]}, "example 1 has label='cow'"),
    ({"text": ["a", "b"], "label": [0, 5]}, {"cls_rl_labels": ["cat", "dog"]}, "example 1 has label=5"),
    ({"text": ["a", "b"], "label": ["cat", "cat"]}, {}, "1 distinct value"),
    ({"text": [], "label": []}, {}, "0 distinct value"),
    ({"text": ["a"], "label": ["cat"]}, {"cls_rl_text_column": ""}, "there is none"),
])
def test_bad_datasets_are_refused_with_one_line(data, opts, message):
    from datasets import Dataset

    with pytest.raises(FtpluginsError, match=message):
        build_prompts(Dataset.from_dict(data), options(**opts), conversational=False)


@pytest.mark.parametrize("key,value", [("cls_rl_mode", "thinking"), ("cls_rl_prompt_format", "chat"),
                                       ("cls_rl_labels", ["cat"]), ("cls_rl_labels", ["cat", "cat"]),
                                       ("cls_rl_label_column", "")])
def test_bad_options_name_the_option(key, value):
    from trl import GRPOTrainer

    with pytest.raises(OptionError, match=key):
        ftplugins.compose(GRPOTrainer, [plugin], **{key: value})


def test_other_trainers_are_refused_before_the_model_loads(tmp_path):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [plugin])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(FtpluginsError, match="cls_rl applies to GRPOTrainer, not to SFTTrainer"):
        cls(model=str(tmp_path / "never-loaded"), args=args, train_dataset=rows())


def test_grpo_without_a_label_column_is_refused_when_the_trainer_is_built(tmp_path):
    """``validate`` does not see the datasets: the refusal comes from ``transform_dataset``, before TRL's init."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ftplugins.testing import tiny_llama, tiny_tokenizer

    cls = ftplugins.compose(GRPOTrainer, [plugin])
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(FtpluginsError, match="no label column 'label'"):
        cls(model=tiny_llama(), reward_funcs=[], args=args, processing_class=tiny_tokenizer(),
            train_dataset=Dataset.from_dict({"text": ["a", "b"], "answer": ["x", "y"]}))


def user_reward(completions, **kwargs):
    return [0.5 for _ in completions]


@pytest.mark.parametrize("mode,names", [("think", ["cls_rl_format", "cls_rl_accuracy"]), ("no_think", ["cls_rl_exact"])])
def test_grpo_trains_two_steps_and_logs_the_rewards_it_computed(mode, names, tmp_path, monkeypatch):
    from trl import GRPOConfig, GRPOTrainer

    from ftplugins.testing import tiny_llama, tiny_tokenizer

    seen: dict[str, list[list[float]]] = {name: [] for name in names}

    def recording(func, name):
        def record(*args, **kwargs):
            values = func(*args, **kwargs)
            seen[name].append(list(values))
            return values
        return record

    monkeypatch.setattr(R, "format_reward", recording(R.format_reward, "cls_rl_format"))
    for cls_, name in ((R.AccuracyReward, "cls_rl_accuracy"), (R.ExactAnswerReward, "cls_rl_exact")):
        monkeypatch.setattr(cls_, "__call__", recording(cls_.__call__, name))
    # The recording wrapper keeps the reward names TRL logs under.
    R.format_reward.__name__ = "cls_rl_format"

    cls = ftplugins.compose(GRPOTrainer, [plugin], cls_rl_mode=mode)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2,
                      per_device_train_batch_size=4, num_generations=2, max_completion_length=6, logging_steps=1,
                      save_strategy="no", disable_tqdm=True, seed=0)
    trainer = cls(model=tiny_llama(), reward_funcs=[user_reward], args=args, train_dataset=rows(),
                  processing_class=tiny_tokenizer())
    assert trainer.reward_func_names == ["user_reward", *names]  # the plugin's after the user's
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 2
    for name in names:
        assert len(seen[name]) == 2 and all(len(v) == 4 for v in seen[name])  # one call per step, B = 4
        for step, entry in enumerate(logs):
            assert entry[f"rewards/{name}/mean"] == pytest.approx(sum(seen[name][step]) / 4)
    for step, entry in enumerate(logs):
        total = [0.5 + sum(values) for values in zip(*(seen[n][step] for n in names))]
        assert entry["reward"] == pytest.approx(sum(total) / 4)  # what GRPO's advantages are computed from


def test_the_grpo_script_trains_with_the_plugin_rewards_alone(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`python -m ftplugins.train grpo --config ... --plugins cls_rl`: TRL's GRPO script, no reward argument."""
    from importlib.metadata import EntryPoint

    import yaml

    from ftplugins import registry
    from ftplugins.train import train

    eps = dict(registry.available_entry_points())
    eps["cls_rl"] = EntryPoint(name="cls_rl", value="ftplugins.methods.cls_rl:plugin", group="ftplugins")
    monkeypatch.setattr(registry, "available_entry_points", lambda: eps)
    data = tmp_path / "classes"
    data.mkdir()
    rows().to_json(str(data / "train.jsonl"))
    out = tmp_path / "out"
    config = dict(model_name_or_path=tiny_model_dir, dataset_name=str(data), output_dir=str(out), max_steps=2,
                  per_device_train_batch_size=2, num_generations=2, max_completion_length=4, use_cpu=True,
                  bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                  plugins=["cls_rl"], cls_rl_mode="no_think", cls_rl_labels=["bird", "cat", "dog"])
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    train(["grpo", "--config", str(path)])
    printed = capsys.readouterr().out  # disable_tqdm: the trainer prints each step's log dict
    assert printed.count("'rewards/cls_rl_exact/mean'") == 2
    manifest = json.loads((out / "ftplugins_run.json").read_text())
    assert "cls_rl" in json.dumps(manifest)
    assert (out / "model.safetensors").is_file()


def test_a_model_path_run_takes_the_chat_template_of_the_saved_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from ftplugins.context import Run

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    auto = Run(plugins=[plugin], options={"cls_rl": options()}, model=model)
    assert plugin._conversational(auto)  # the saved tiny tokenizer has a chat template
    plain = Run(plugins=[plugin], options={"cls_rl": options(cls_rl_prompt_format="plain")}, model=model)
    assert not plugin._conversational(plain)


def vowel_reward(completions, **kwargs):
    """Varies across a group, so GRPO's advantages are non-zero and the model (vision tower included) moves."""
    return [float(sum(ch in "aeiou" for ch in c[0]["content"])) for c in completions]


def test_grpo_trains_a_tiny_vision_language_model_on_image_rows(tmp_path, monkeypatch):
    """TRL's VLM path (Idefics3, the SmolVLM architecture, built from a config): the images reach the model, the
    plugin's rewards score every completion against its row's label, and the weights train."""
    import numpy as np
    import torch
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from ftplugins.testing import tiny_vlm

    model, processor = tiny_vlm()
    seen_labels, images_seen = [], []
    accuracy = R.AccuracyReward.__call__

    def record(self, completions, **kwargs):
        seen_labels.extend(kwargs["label"])
        return accuracy(self, completions, **kwargs)

    monkeypatch.setattr(R.AccuracyReward, "__call__", record)
    model.model.vision_model.register_forward_hook(
        lambda module, args, output: images_seen.append(output.last_hidden_state.shape[0]))
    pictures = [Image.fromarray((np.random.RandomState(i).rand(32, 32, 3) * 255).astype("uint8")) for i in range(8)]
    data = Dataset.from_list([{"text": f"picture {i}", "label": ["cat", "dog", "bird"][i % 3], "image": pictures[i]}
                              for i in range(8)])
    cls = ftplugins.compose(GRPOTrainer, [plugin], cls_rl_prompt_format="conversational")
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2,
                      per_device_train_batch_size=4, num_generations=2, max_completion_length=6, logging_steps=1,
                      learning_rate=1e-2, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = cls(model=model, reward_funcs=[vowel_reward], args=args, train_dataset=data, processing_class=processor)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.reward_func_names == ["vowel_reward", "cls_rl_format", "cls_rl_accuracy"]
    assert len(seen_labels) == 8 and set(seen_labels) <= {"cat", "dog", "bird"}  # B = 4 per step, names not ids
    assert images_seen and all(n > 0 for n in images_seen)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("model.vision_model.") for n in changed) and any("text_model" in n for n in changed)
