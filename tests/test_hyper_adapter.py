"""FM3 hypernetwork adapters on the real MiniLM classifier: generated weights per task, frozen base, gradients into
the hypernetwork, the exported per-task PEFT adapter equal to the hypernetwork path, contrastive stage, errors."""

from __future__ import annotations

import pytest
import torch

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.hyper_adapter import plugin
from ftplugins.methods.hyper_adapter.contrastive import cosine_pair_loss

from test_mean_teacher import tokenizer  # noqa: F401  (a shared fixture)

TASKS = ["sentiment:2", "topic:3", "formality:2"]
ROWS = [("a wonderful film", "sentiment", 1), ("a boring mess", "sentiment", 0),
        ("the striker scored twice", "topic", 0), ("shares fell on monday", "topic", 1),
        ("the new chip is fast", "topic", 2), ("dear sir, kindly reply", "formality", 1),
        ("hey wassup lol", "formality", 0), ("truly awful", "sentiment", 0)]


def dataset(tokenizer, rows=ROWS):
    from datasets import Dataset

    data = Dataset.from_dict({"text": [r[0] for r in rows], "task": [r[1] for r in rows],
                              "label": [r[2] for r in rows]})
    return data.map(lambda row: tokenizer(row["text"], truncation=True, max_length=16), remove_columns=["text"])


def build(tmp_path, tokenizer, rows=ROWS, steps=3, optimizers=None, **options):
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import minilm_classifier

    options.setdefault("hyper_adapter_tasks", TASKS)
    torch.manual_seed(0)
    cls = ftplugins.compose(Trainer, [plugin], **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=steps,
                             per_device_train_batch_size=8, learning_rate=1e-2, save_strategy="no",
                             disable_tqdm=True, seed=0)
    model = minilm_classifier(num_labels=2)
    given = {} if optimizers is None else {"optimizers": optimizers(model)}
    return cls(model=model, args=args, train_dataset=dataset(tokenizer, rows), processing_class=tokenizer, **given)


def batch_of(tokenizer, texts, tasks):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return dict(batch, task=torch.tensor(tasks))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):  # noqa: F811
    trainer = build(tmp_path_factory.mktemp("hyper"), tokenizer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer, before


def test_the_base_stays_frozen_and_only_the_hypernetwork_and_heads_train(trained):
    trainer, before = trained
    after = dict(trainer.model.named_parameters())
    base = [n for n in before if n.startswith("adapted.")]
    assert base and all(torch.equal(before[n], after[n]) for n in base)
    assert all(not after[n].requires_grad for n in base)
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed <= {n for n in before if n.startswith(("hypernetwork.", "heads."))}
    assert all(any(n.startswith(f"heads.{t}.") for n in changed) for t in range(3))


def test_every_hypernetwork_parameter_receives_a_gradient(trained, tokenizer):  # noqa: F811
    trainer, _ = trained
    model = trainer.model.train()
    model.zero_grad()
    out = model(**batch_of(tokenizer, ["a wonderful film", "shares fell", "hey lol"], [0, 1, 2]),
                labels=torch.tensor([1, 1, 0]))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.hypernetwork.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), [
        n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    model.zero_grad()


def test_the_same_task_gets_identical_adapter_weights_and_tasks_differ(trained):
    model = trained[0].model
    first, again, other = model.generated(1), model.generated(1), model.generated(2)
    assert len(first) == 12  # MiniLM: 6 layers x (attention output, FFN output)
    assert all(torch.equal(first[m][k], again[m][k]) for m in first for k in first[m])
    assert any(not torch.equal(first[m]["up"], other[m]["up"]) for m in first)


def test_a_mixed_batch_gives_each_row_its_own_tasks_output(trained, tokenizer):  # noqa: F811
    model = trained[0].model.eval()
    texts, tasks = ["a wonderful film", "the striker scored", "dear sir", "a boring mess"], [0, 1, 2, 0]
    with torch.no_grad():
        mixed = model(**batch_of(tokenizer, texts, tasks)).logits
        for i, (text, task) in enumerate(zip(texts, tasks)):
            alone = model.task_logits(task, **tokenizer([text], return_tensors="pt"))
            width = alone.shape[1]
            assert torch.allclose(mixed[i, :width], alone[0], atol=1e-5)
            assert torch.isinf(mixed[i, width:]).all()


def test_at_init_every_generated_adapter_is_the_identity(tmp_path, tokenizer):  # noqa: F811
    model = build(tmp_path, tokenizer).model.eval()
    inputs = tokenizer(["a wonderful film"], return_tensors="pt")
    with torch.no_grad():
        base = model.adapted.get_base_model()
        with model.adapted.disable_adapter():
            expected = base.bert(**inputs).pooler_output
        assert torch.equal(model.task_features(2, **inputs), expected)


def test_at_init_each_adapter_has_its_own_kaiming_sized_down_projection(tmp_path, tokenizer):  # noqa: F811
    import math

    from ftplugins.methods.hyper_adapter.hypernetwork import AdapterHypernetwork

    net = build(tmp_path, tokenizer).model.hypernetwork
    assert not hasattr(net, "projector") and all(head.bias is None for g in net.generators.values()
                                                 for head in g.heads.values())
    sources = torch.cat([net.source(t) for t in range(3)]).detach()
    assert torch.allclose(sources.norm(dim=-1), torch.ones(len(sources)))
    off = (sources @ sources.T)[~torch.eye(len(sources), dtype=torch.bool)].abs().mean()
    torch.manual_seed(0)
    mlp = AdapterHypernetwork(3, net.sites, 64, 128, sources="mlp")
    theirs = torch.nn.functional.normalize(torch.cat([mlp.source(t) for t in range(3)]).detach(), dim=-1)
    assert off < 0.5 * (theirs @ theirs.T)[~torch.eye(len(theirs), dtype=torch.bool)].abs().mean()
    generated = net(0)
    downs = [generated[site.module]["down"].detach() for site in net.sites]
    assert all(not torch.allclose(downs[0], other, atol=1e-3) for other in downs[1:])
    kaiming = 1 / math.sqrt(3 * 384)  # a fresh Linear(384, b)'s weight std
    assert all(abs(float(d.std()) / kaiming - 1) < 0.1 for d in downs)
    assert all(not generated[m][k].detach().any() for m in generated for k in ("up", "up_bias"))


def test_the_generators_step_by_each_adapters_rms_scaled_gradient_unclipped(tmp_path, tokenizer):  # noqa: F811
    from transformers import Trainer, TrainingArguments

    from ftplugins.methods.hyper_adapter.optimizer import PerAdapterSteps
    from ftplugins.testing import minilm_classifier

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=8, learning_rate=1e-2, lr_scheduler_type="constant",
                             max_grad_norm=1e-6, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = ftplugins.compose(Trainer, [plugin], hyper_adapter_tasks=TASKS, hyper_adapter_export=False)(
        model=minilm_classifier(num_labels=2), args=args, train_dataset=dataset(tokenizer), processing_class=tokenizer)
    model, net = trainer.model, trainer.model.hypernetwork
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    raw, sources = {}, {}  # what each task's generated tensors receive, before the optimizer scales it

    def record(module, args, output):
        task = int(args[0])
        sources[task] = net.source(task).detach()
        for i, site in enumerate(net.sites):
            for name, tensor in output[site.module].items():
                tensor.register_hook(lambda g, key=(task, i, name): raw.__setitem__(key, g.detach().clone()))

    handle = net.register_forward_hook(record)  # runs before the optimizer's (registered when training starts)
    trainer.train()
    handle.remove()
    assert isinstance(trainer.optimizer.optimizer, PerAdapterSteps) and len(raw) == 3 * len(net.sites) * 4
    for key, generator in net.generators.items():
        for name, head in generator.heads.items():
            expected = torch.zeros_like(head.weight)
            for (task, i, weight), grad in raw.items():
                if weight == name and net.sites[i].shape_key == key:  # first step: RMS of g is |g|
                    expected -= 1e-2 * torch.outer((grad / (grad.abs() + 1e-8)).flatten(), sources[task][i])
            moved = head.weight.detach() - before[f"hypernetwork.generators.{key}.heads.{name}.weight"]
            assert torch.allclose(moved, expected, atol=1e-6), (key, name, float((moved - expected).abs().max()))
    heads = [n for n in before if n.startswith("heads.")]
    assert all(not torch.equal(before[n], model.get_parameter(n)) for n in heads)  # AdamW, clipped, still steps


def test_per_adapter_steps_under_gradient_accumulation_and_outside_training(tmp_path, tokenizer):  # noqa: F811
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import minilm_classifier

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-2,
                             save_strategy="no", disable_tqdm=True, seed=0)
    trainer = ftplugins.compose(Trainer, [plugin], hyper_adapter_tasks=TASKS, hyper_adapter_export=False)(
        model=minilm_classifier(num_labels=2), args=args, train_dataset=dataset(tokenizer), processing_class=tokenizer)
    net = trainer.model.hypernetwork
    before = {n: p.detach().clone() for n, p in net.generators.named_parameters()}
    trainer.train()
    optimizer = trainer.optimizer.optimizer
    counts = {moment["count"] for moment in optimizer.moments.values()}
    assert counts and counts <= {1, 2} and 2 in counts  # one moment update per backward that saw the task
    assert all(not torch.equal(before[n], p) for n, p in net.generators.named_parameters() if ".up" in n)
    assert not optimizer.taken and not optimizer._handles  # nothing held once train() returned
    loss = trainer.model.train()(**batch_of(tokenizer, ["a wonderful film"], [0]), labels=torch.tensor([1])).loss
    loss.backward()  # outside train(): autograd's own gradients, unscaled, left in .grad
    assert all(p.grad is not None for p in net.generators.parameters())
    with pytest.raises(FtpluginsError, match="did not take"):
        optimizer.step()


def test_a_trainer_that_trains_again_steps_the_generators_again(tmp_path, tokenizer):  # noqa: F811
    trainer = build(tmp_path, tokenizer, steps=1, hyper_adapter_export=False)
    trainer.train()
    generators = trainer.model.hypernetwork.generators
    before = {n: p.detach().clone() for n, p in generators.named_parameters()}
    trainer.train()  # the kept optimizer (or a new one) must watch again, else step() refuses
    assert all(not torch.equal(before[n], p) for n, p in generators.named_parameters() if ".up" in n)


def test_the_hyperformer_parametrization_trains_with_the_trainers_optimizer(tmp_path, tokenizer):  # noqa: F811
    from ftplugins.methods.hyper_adapter.optimizer import PerAdapterSteps

    trainer = build(tmp_path, tokenizer, steps=1, hyper_adapter_parametrization="hyperformer",
                    hyper_adapter_export=False)
    net = trainer.model.hypernetwork
    assert hasattr(net, "projector") and all(head.bias is not None for head in net.generators[
        net.sites[0].shape_key].heads.values())
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer.train()
    assert type(trainer.optimizer.optimizer) is torch.optim.AdamW
    assert not isinstance(trainer.optimizer.optimizer, PerAdapterSteps)
    moved = {n for n, p in net.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all(".heads.up" in n for n in moved)  # step 1: U = 0 blocks every gradient below it


def test_a_users_optimizer_is_refused_only_where_the_plugin_builds_one(tmp_path, tokenizer):  # noqa: F811
    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.1), None

    with pytest.raises(FtpluginsError, match="plugin\\(s\\) hyper_adapter build the optimizer"):
        build(tmp_path, tokenizer, optimizers=sgd)  # orthogonal: its per-adapter steps
    trainer = build(tmp_path, tokenizer, optimizers=sgd, hyper_adapter_parametrization="hyperformer")
    assert isinstance(trainer.optimizer, torch.optim.SGD)  # hyperformer keeps the trainer's (here the user's)


def test_the_exported_adapter_loads_with_peft_and_equals_the_hypernetwork(trained, tokenizer):  # noqa: F811
    import json
    import os

    from transformers import AutoModelForSequenceClassification

    from ftplugins.methods.hyper_adapter.export import load_task_model
    from ftplugins.testing import minilm_path

    trainer, _ = trained
    model = trainer.model.eval()
    root = os.path.join(trainer.args.output_dir, "task_adapters")
    assert sorted(os.listdir(root)) == ["formality", "sentiment", "topic"]  # written by post_train
    with open(os.path.join(root, "topic", "adapter_config.json")) as handle:
        assert json.load(handle)["peft_type"] == "BOTTLENECK"
    inputs = tokenizer(["the striker scored twice", "kindly reply"], padding=True, return_tensors="pt")
    loaded = load_task_model(os.path.join(root, "topic"), base=minilm_path()).eval()
    by_peft = ftplugins.load_adapter(
        AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3), os.path.join(root, "topic"))
    with torch.no_grad():
        expected = model.task_logits(1, **inputs)
        assert expected.shape == (2, 3)
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-5)
        assert torch.allclose(by_peft.eval()(**inputs).logits, expected, atol=1e-5)
        adapted = loaded.get_base_model().bert(**inputs).pooler_output
        with loaded.disable_adapter():  # the trained adapters are not the identity: the export carries them
            assert not torch.allclose(loaded.get_base_model().bert(**inputs).pooler_output, adapted, atol=1e-4)


def test_the_contrastive_stage_trains_the_hypernetwork_before_the_heads(tmp_path, tokenizer):  # noqa: F811
    trainer = build(tmp_path, tokenizer, steps=2, hyper_adapter_contrastive_steps=2, hyper_adapter_export=False)
    heads = {n: p.detach().clone() for n, p in trainer.model.heads.named_parameters()}
    hyper = {n: p.detach().clone() for n, p in trainer.model.hypernetwork.named_parameters()}
    trainer.train()
    assert all(torch.equal(heads[n], p) for n, p in trainer.model.heads.named_parameters())
    assert any(not torch.equal(hyper[n], p) for n, p in trainer.model.hypernetwork.named_parameters())
    assert not (tmp_path / "task_adapters").exists()


def test_the_cosine_pair_loss_is_setfits_over_same_task_pairs():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [3.0, 0.0]])
    loss = cosine_pair_loss([u, v], [torch.tensor([0, 0, 1]), torch.tensor([1, 0])])
    c = 2 ** -0.5  # pairs: (u0,u1) same label cos 0; (u0,u2) diff cos c; (u1,u2) diff cos c; (v0,v1) diff cos 1
    assert float(loss) == pytest.approx(((0 - 1) ** 2 + c ** 2 + c ** 2 + 1) / 4)
    single = torch.ones(1, 2, requires_grad=True)
    zero = cosine_pair_loss([single], [torch.tensor([0])])
    assert zero.detach().item() == 0 and zero.requires_grad


def test_a_task_without_examples_is_one_clear_error(tmp_path, tokenizer):  # noqa: F811
    rows = [r for r in ROWS if r[1] != "topic"]
    with pytest.raises(FtpluginsError, match=r"tasks \['topic'\] have no examples in the train dataset"):
        build(tmp_path, tokenizer, rows=rows)


@pytest.mark.parametrize("rows,message", [
    ([("x", "sports", 0)], r"task 'sports'; expected a name in \['sentiment', 'topic', 'formality'\]"),
    ([("x", "sentiment", 2)], r"task 'sentiment' with label 2; the task has 2 labels"),
])
def test_bad_rows_are_refused_naming_the_row(rows, message, tmp_path, tokenizer):  # noqa: F811
    with pytest.raises(FtpluginsError, match=message):
        build(tmp_path, tokenizer, rows=ROWS + rows)


@pytest.mark.parametrize("key,value,message", [
    ("hyper_adapter_tasks", ["sst2"], "NAME:NUM_LABELS"), ("hyper_adapter_tasks", ["a:2", "a:3"], r"\['a'\]"),
    ("hyper_adapter_activation", "swish", "hyper_adapter_activation"), ("hyper_adapter_size", 0, "hyper_adapter_size"),
    ("hyper_adapter_parametrization", "mlp", "orthogonal, hyperformer"),
])
def test_bad_options_name_the_option(key, value, message):
    from transformers import Trainer

    with pytest.raises(OptionError, match=message):
        ftplugins.compose(Trainer, [plugin], **{key: value})


def test_missing_tasks_and_trl_trainers_are_refused_before_the_model_loads(tmp_path):
    from transformers import Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(FtpluginsError, match="needs its tasks: --hyper_adapter_tasks"):
        ftplugins.compose(Trainer, [plugin])(model=str(tmp_path / "never-loaded"), args=args, train_dataset=[])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(FtpluginsError, match="hyper_adapter trains classifiers with transformers.Trainer, not SFT"):
        ftplugins.compose(SFTTrainer, [plugin], hyper_adapter_tasks=TASKS)(
            model=str(tmp_path / "never-loaded"), args=args, train_dataset=[])


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tokenizer):  # noqa: F811
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import minilm_classifier

    def trainer_for():
        torch.manual_seed(0)
        cls = ftplugins.compose(Trainer, [plugin], hyper_adapter_tasks=TASKS, hyper_adapter_export=False,
                                hyper_adapter_contrastive_steps=1)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=3,
                                 per_device_train_batch_size=4, learning_rate=1e-2, save_strategy="steps",
                                 save_steps=1, disable_tqdm=True, seed=0, save_only_model=False)
        return cls(model=minilm_classifier(num_labels=2), args=args, train_dataset=dataset(tokenizer),
                   processing_class=tokenizer)

    whole = trainer_for()
    whole.train()
    resumed = trainer_for()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))  # the contrastive step, then 2 CE steps
    again = dict(resumed.model.named_parameters())
    trained = [n for n, _ in whole.model.named_parameters() if n.startswith(("hypernetwork.", "heads."))]
    assert trained and all(torch.equal(p, again[n]) for n, p in whole.model.named_parameters())
