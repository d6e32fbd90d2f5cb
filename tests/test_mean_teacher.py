"""Mean teacher on the real MiniLM classifier: EMA formula, frozen teacher, pseudo-label threshold, errors."""

from __future__ import annotations

import pytest
import torch

import ftplugins
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.methods.mean_teacher import plugin
from ftplugins.methods.mean_teacher.teacher import ema_update, mean_teacher_loss



@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ftplugins.testing import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def stream(tokenizer, labels=(1, 0, None, None, 1, 0, None, None)):
    from datasets import Dataset

    texts = ["a wonderful film", "a boring mess", "truly excellent", "truly awful",
             "i loved it", "i hated it", "brilliant", "dull"][:len(labels)]
    data = Dataset.from_dict({"text": texts, "label": list(labels)})
    return data.map(lambda row: tokenizer(row["text"], truncation=True, max_length=16), remove_columns=["text"])


def trained(tmp_path, tokenizer, steps=1, seen=None, **options):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from ftplugins.testing import minilm_classifier

    torch.manual_seed(0)
    model = minilm_classifier(num_labels=2)

    class Record(TrainerCallback):  # the student after each step (before the EMA callback, which runs later)
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if seen is not None:
                seen.append({n: p.detach().clone() for n, p in model.named_parameters()})

    cls = ftplugins.compose(Trainer, [plugin], **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=steps,
                             per_device_train_batch_size=8, learning_rate=1e-3, save_strategy="no",
                             disable_tqdm=True, seed=0)
    trainer = cls(model=model, args=args, train_dataset=stream(tokenizer), processing_class=tokenizer,
                  callbacks=[Record()])
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    return trainer, initial


def test_the_teacher_is_the_ema_of_the_student_and_never_gets_gradients(tmp_path, tokenizer):
    seen = []
    trainer, initial = trained(tmp_path, tokenizer, steps=2, seen=seen, mean_teacher_alpha=0.5)
    teacher = dict(trainer.ftplugins_run.state["mean_teacher"].named_parameters())
    assert len(seen) == 2
    for name, t in teacher.items():
        expected = 0.5 * (0.5 * initial[name] + 0.5 * seen[0][name]) + 0.5 * seen[1][name]
        assert torch.allclose(t, expected, atol=1e-6), name
        assert not t.requires_grad and t.grad is None
    assert any(not torch.equal(seen[1][n], initial[n]) for n in initial)  # the student did train


def test_alpha_one_freezes_the_teacher(tmp_path, tokenizer):
    trainer, initial = trained(tmp_path, tokenizer, steps=2, mean_teacher_alpha=1.0)
    teacher = dict(trainer.ftplugins_run.state["mean_teacher"].named_parameters())
    assert all(torch.equal(teacher[n], initial[n]) for n in initial)


def test_ema_update_is_the_formula_on_parameters_and_float_buffers():
    torch.manual_seed(0)
    teacher, student = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    student.weight.data.uniform_()
    student.running_mean.uniform_()
    t_weight, t_mean = teacher.weight.detach().clone(), teacher.running_mean.clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * t_weight + 0.1 * student.weight)
    assert torch.allclose(teacher.running_mean, 0.9 * t_mean + 0.1 * student.running_mean)


def test_only_confident_pseudo_labels_of_unlabelled_rows_count():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]])
    teacher = torch.tensor([[0.0, 9.0], [9.0, 0.0], [0.0, 5.0], [0.1, 0.0]])  # rows 2 confident, 3 not
    labels = torch.tensor([0, 1, -100, -100])
    ce = torch.nn.functional.cross_entropy
    supervised = ce(student[:2], labels[:2])
    loss = mean_teacher_loss(student, teacher, labels, threshold=0.9, weight=0.5)
    assert float(loss) == pytest.approx(float(supervised + 0.5 * ce(student[2:3], torch.tensor([1]))))
    assert float(mean_teacher_loss(student, teacher, labels, threshold=1.0, weight=0.5)) == pytest.approx(
        float(supervised))  # nothing is confident enough: the supervised loss alone
    only_stream = mean_teacher_loss(student[2:], teacher[2:], labels[2:], threshold=0.9, weight=0.5)
    assert float(only_stream) == pytest.approx(float(0.5 * ce(student[2:3], torch.tensor([1]))))


def test_a_stream_without_unlabelled_rows_and_string_labels_are_refused(tmp_path, tokenizer):
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import minilm_classifier

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    cls = ftplugins.compose(Trainer, [plugin])
    with pytest.raises(FtpluginsError, match="no unlabelled rows"):
        cls(model=minilm_classifier(), args=args, train_dataset=stream(tokenizer, labels=(0, 1)),
            processing_class=tokenizer)
    from datasets import Dataset

    with pytest.raises(FtpluginsError, match="label 'pos' in 'label' is not a class index"):
        cls(model=minilm_classifier(), args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"input_ids": [[101, 102]] * 2, "label": ["pos", None]}))


@pytest.mark.parametrize("key,value", [("mean_teacher_alpha", 1.5), ("mean_teacher_threshold", -0.1),
                                       ("mean_teacher_label_column", "")])
def test_bad_options_name_the_option(key, value):
    from transformers import Trainer

    with pytest.raises(OptionError, match=key):
        ftplugins.compose(Trainer, [plugin], **{key: value})


def test_the_teacher_is_checkpointed_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, tokenizer):
    from transformers import Trainer, TrainingArguments

    from ftplugins.methods.mean_teacher.teacher import TEACHER_FILE
    from ftplugins.testing import minilm_classifier

    def trainer_for(output_dir):
        torch.manual_seed(0)
        cls = ftplugins.compose(Trainer, [plugin], mean_teacher_alpha=0.5, mean_teacher_threshold=0.5)
        args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none", max_steps=2,
                                 per_device_train_batch_size=4, learning_rate=1e-3, save_strategy="steps",
                                 save_steps=1, disable_tqdm=True, seed=0)
        return cls(model=minilm_classifier(num_labels=2), args=args, train_dataset=stream(tokenizer),
                   processing_class=tokenizer)

    whole = trainer_for(tmp_path / "whole")
    whole.train()
    assert (tmp_path / "whole" / "checkpoint-1" / TEACHER_FILE).is_file()
    resumed = trainer_for(tmp_path / "whole")  # a fresh process's trainer: its teacher starts from the student
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    for done, again in ((whole.model, resumed.model),
                        (whole.ftplugins_run.state["mean_teacher"], resumed.ftplugins_run.state["mean_teacher"])):
        again = dict(again.named_parameters())
        for name, param in done.named_parameters():
            assert torch.allclose(param, again[name], atol=1e-6), name
    teacher = dict(whole.ftplugins_run.state["mean_teacher"].named_parameters())
    assert any(not torch.allclose(p, teacher[n], atol=1e-4) for n, p in whole.model.named_parameters())


def test_resuming_from_a_checkpoint_without_the_teacher_is_refused(tmp_path, tokenizer):
    from transformers import Trainer, TrainingArguments

    from ftplugins.methods.mean_teacher.teacher import TEACHER_FILE
    from ftplugins.testing import minilm_classifier

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=8, save_strategy="steps", save_steps=1, disable_tqdm=True,
                             save_only_model=True)
    plain = stream(tokenizer).map(lambda row: {"label": 0 if row["label"] is None else row["label"]})
    ftplugins.compose(Trainer, [])(model=minilm_classifier(), args=args, train_dataset=plain,
                                   processing_class=tokenizer).train()  # a run without the mean teacher
    args.max_steps = 2
    trainer = ftplugins.compose(Trainer, [plugin])(model=minilm_classifier(), args=args,
                                                  train_dataset=stream(tokenizer), processing_class=tokenizer)
    with pytest.raises(FtpluginsError, match=f"checkpoint-1 has no {TEACHER_FILE}"):
        trainer.train(resume_from_checkpoint=True)


def detection_stream(labelled=(0, 1), n=8):
    import numpy as np
    from datasets import Dataset

    rng = np.random.RandomState(0)
    rows = [{"pixel_values": rng.rand(3, 32, 32).astype("float32").tolist(),
             "labels": {"class_labels": [i % 3], "boxes": [[0.5, 0.5, 0.3, 0.4]]} if i in labelled else None}
            for i in range(n)]
    return Dataset.from_list(rows)


def collate_detection(rows):
    return {"pixel_values": torch.tensor([r["pixel_values"] for r in rows]),
            "labels": [None if r["labels"] is None else {"class_labels": torch.tensor(r["labels"]["class_labels"]),
                                                         "boxes": torch.tensor(r["labels"]["boxes"])} for r in rows]}


def trained_detr(tmp_path, **options):
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import tiny_detr

    model = tiny_detr()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    cls = ftplugins.compose(Trainer, [plugin], mean_teacher_alpha=0.5, mean_teacher_label_column="labels", **options)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2,
                             per_device_train_batch_size=8, learning_rate=1e-2, save_strategy="no",
                             disable_tqdm=True, seed=0, remove_unused_columns=False)
    trainer = cls(model=model, args=args, train_dataset=detection_stream(), data_collator=collate_detection)
    trainer.train()
    return trainer, initial


def test_detection_the_teachers_confident_boxes_train_the_student_on_unlabelled_images(tmp_path):
    with_stream, initial = trained_detr(tmp_path / "stream", mean_teacher_threshold=0.0, mean_teacher_weight=0.5)
    without, _ = trained_detr(tmp_path / "labelled", mean_teacher_threshold=0.0, mean_teacher_weight=0.0)
    student = dict(with_stream.model.named_parameters())
    assert any(not torch.equal(p, student[n]) for n, p in without.model.named_parameters())  # the stream counted
    teacher = dict(with_stream.ftplugins_run.state["mean_teacher"].named_parameters())
    assert all(not t.requires_grad and t.grad is None for t in teacher.values())
    assert any(not torch.equal(teacher[n], initial[n]) for n in initial)  # the EMA moved it
    nothing, _ = trained_detr(tmp_path / "unsure", mean_teacher_threshold=1.0, mean_teacher_weight=0.5)
    assert all(torch.equal(p, dict(nothing.model.named_parameters())[n])  # τ = 1: no pseudo-box, labelled only
               for n, p in without.model.named_parameters())


def test_detection_pseudo_targets_are_the_confident_object_queries():
    from ftplugins.methods.mean_teacher.detection import pseudo_targets

    # 2 images x 3 queries x (2 classes + no-object)
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 4.0, 0.0]],
                           [[0.0, 0.0, 9.0], [1.0, 1.0, 1.0], [0.0, 0.0, 9.0]]])
    boxes = torch.rand(2, 3, 4)
    first, second = pseudo_targets(logits, boxes, threshold=0.9)
    assert first["class_labels"].tolist() == [0, 1] and torch.equal(first["boxes"], boxes[0, [0, 2]])
    assert second["class_labels"].numel() == 0 and second["boxes"].shape == (0, 4)


def test_detection_targets_without_boxes_or_unlabelled_images_are_refused(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from ftplugins.testing import tiny_detr

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False)
    cls = ftplugins.compose(Trainer, [plugin], mean_teacher_label_column="labels")
    with pytest.raises(FtpluginsError, match="no unlabelled images"):
        cls(model=tiny_detr(), args=args, train_dataset=detection_stream(labelled=range(8)),
            data_collator=collate_detection)
    bad = Dataset.from_list([{"pixel_values": [0.0], "labels": {"class_labels": [0, 1], "boxes": [[0.5] * 4]}},
                             {"pixel_values": [0.0], "labels": None}])
    with pytest.raises(FtpluginsError, match="row 0 of 'labels' has 2 class_labels and 1 boxes"):
        cls(model=tiny_detr(), args=args, train_dataset=bad, data_collator=collate_detection)


# --- PS-TTL's prototype-based soft labels -------------------------------------------------------------------------

def test_a_prototype_is_the_mean_of_its_members_then_an_ema_and_absent_classes_keep_theirs():
    from ftplugins.methods.mean_teacher.prototypes import Prototypes

    torch.manual_seed(0)
    protos = Prototypes(momentum=0.75)
    first, classes = torch.randn(5, 4), torch.tensor([0, 0, 2, 2, 2])
    protos.update(first, classes, num_classes=3)
    assert torch.allclose(protos.vectors[0], first[:2].mean(0)) and torch.allclose(protos.vectors[2], first[2:].mean(0))
    assert protos.seen.tolist() == [True, False, True]
    second = torch.randn(2, 4)
    protos.update(second, torch.tensor([0, 1]), num_classes=3)
    assert torch.allclose(protos.vectors[0], 0.75 * first[:2].mean(0) + 0.25 * second[0])
    assert torch.allclose(protos.vectors[1], second[1])  # a class's first batch sets its prototype
    assert torch.allclose(protos.vectors[2], first[2:].mean(0))  # absent from the batch: unchanged


def test_soft_labels_sum_to_one_favour_the_nearest_prototype_and_skip_classes_without_one():
    from ftplugins.methods.mean_teacher.prototypes import Prototypes

    protos = Prototypes(momentum=0.0)
    assert protos.soft_labels(torch.randn(2, 3), temperature=0.1) is None  # no prototype yet
    protos.update(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2]), num_classes=3)
    soft = protos.soft_labels(torch.tensor([[2.0, 0.1, 0.0], [0.2, 3.0, 0.0], [1.0, 1.0, 0.0]]), temperature=0.1)
    assert torch.allclose(soft.sum(-1), torch.ones(3))
    assert soft[:, 1].eq(0).all()  # class 1 has no prototype
    assert soft.argmax(-1).tolist()[:2] == [0, 2] and torch.allclose(soft[2, 0], soft[2, 2])
    sharper = protos.soft_labels(torch.tensor([[2.0, 0.1, 0.0]]), temperature=0.01)
    assert sharper[0, 0] > soft[0, 0]  # a lower temperature sharpens


def test_soft_labels_give_the_unconfident_rows_a_target_and_confident_rows_keep_their_hard_label():
    import torch.nn.functional as F

    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.tensor([[9.0, 0, 0], [0, 0.1, 0], [0, 0, 9.0], [0.1, 0, 0]])  # rows 0, 2 confident
    labels = torch.tensor([-100, -100, -100, -100])
    soft = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2]])
    loss = mean_teacher_loss(student, teacher, labels, threshold=0.9, weight=0.5, soft=soft)
    targets = torch.stack([F.one_hot(torch.tensor(0), 3).float(), soft[1], F.one_hot(torch.tensor(2), 3).float(),
                           soft[3]])
    assert torch.allclose(loss, 0.5 * F.cross_entropy(student, targets))
    hard = mean_teacher_loss(student, teacher, labels, threshold=0.9, weight=0.5)
    assert torch.allclose(hard, 0.5 * F.cross_entropy(student[[0, 2]], torch.tensor([0, 2])))
    assert mean_teacher_loss(student, teacher, labels, 0.9, 0.5, soft=None).item() == pytest.approx(hard.item())


def test_minilm_prototypes_are_the_teachers_mean_features_and_the_teacher_gets_no_gradient(tmp_path, tokenizer):
    from transformers import DataCollatorWithPadding

    from ftplugins.methods.mean_teacher.prototypes import teacher_logits_and_features
    from ftplugins.methods.mean_teacher.teacher import frozen_copy

    # τ = 1: no unlabelled row is confident, so the members are the labelled rows under their label; α = 1 keeps
    # the teacher at the initial student; momentum 0: the prototypes are this batch's means.
    trainer, initial = trained(tmp_path, tokenizer, steps=1, mean_teacher_alpha=1.0, mean_teacher_threshold=1.0,
                               mean_teacher_prototype_momentum=0.0)
    run = trainer.ftplugins_run
    teacher = run.state["mean_teacher"]
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(p, initial[n]) for n, p in trainer.model.named_parameters())  # the student trained

    data = stream(tokenizer)
    batch = DataCollatorWithPadding(tokenizer)([{k: row[k] for k in ("input_ids", "attention_mask")} for row in data])
    _, features = teacher_logits_and_features(frozen_copy(teacher), dict(batch), num_classes=2)
    labels = torch.tensor([-100 if v is None else v for v in data["label"]])
    protos = run.state["mean_teacher_prototypes"]
    for c in (0, 1):
        assert torch.allclose(protos.vectors[c], features[labels == c].mean(0), atol=1e-5), c


def test_hard_labels_switch_the_soft_labels_off(tmp_path, tokenizer):
    soft, initial = trained(tmp_path / "soft", tokenizer, mean_teacher_alpha=1.0, mean_teacher_threshold=1.0)
    hard, _ = trained(tmp_path / "hard", tokenizer, mean_teacher_alpha=1.0, mean_teacher_threshold=1.0,
                      mean_teacher_labels="hard", mean_teacher_weight=0.5)
    none, _ = trained(tmp_path / "none", tokenizer, mean_teacher_alpha=1.0, mean_teacher_threshold=1.0,
                      mean_teacher_weight=0.0)
    params = lambda t: dict(t.model.named_parameters())  # noqa: E731
    # τ = 1: hard labels add nothing (= λ 0); soft labels still train on the unconfident stream.
    assert all(torch.allclose(p, params(none)[n]) for n, p in params(hard).items())
    assert any(not torch.allclose(p, params(none)[n]) for n, p in params(soft).items())
    assert "mean_teacher_prototypes" not in hard.ftplugins_run.state or \
        hard.ftplugins_run.state["mean_teacher_prototypes"].vectors is None


@pytest.mark.parametrize("key,value", [("mean_teacher_labels", "soft"), ("mean_teacher_temperature", 0.0),
                                       ("mean_teacher_prototype_momentum", 1.5)])
def test_bad_soft_label_options_name_the_option(key, value):
    with pytest.raises((OptionError, ValueError), match=key):
        ftplugins.compose(__import__("transformers").Trainer, [plugin], **{key: value})


def test_a_model_without_a_per_class_head_is_refused_with_the_way_out():
    from ftplugins.methods.mean_teacher.prototypes import classification_head

    with pytest.raises(FtpluginsError, match="mean_teacher_labels=hard"):
        classification_head(torch.nn.Sequential(torch.nn.Linear(4, 5)), num_classes=2)
