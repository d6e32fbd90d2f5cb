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
