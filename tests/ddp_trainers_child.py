"""Plugins of the other trainer families under DDP in one launch (tests/test_ddp_trainers.py): cls_rl on GRPOTrainer,
bob on DiffusionTrainer, gan_augment on transformers.Trainer, one after the other in the same process group.

``run_case`` is shared with the test, which calls it in-process with the whole global batch on one process. Each
rank writes its trainable weights (rank<r>.pt) and what it trained on (rows<r>.json)."""

import json
import os
import sys

import torch
from ddp_child_common import run_cases_and_exit, save_rank_weights

GLOBAL_BATCH, STEPS = 4, 2
CASES = ("cls_rl", "bob", "gan_augment")


def varied_reward(completions, **kwargs):
    """A reward that differs between the completions of one prompt (cls_rl's own is 0 for an untrained model), so
    GRPO's advantages, and the update, are not zero."""
    return [float(sum(map(ord, str(c))) % 5) for c in completions]


def grpo(root: str, world_size: int):
    import ftplugins
    from ftplugins.methods.cls_rl import plugin
    from ftplugins.testing import tiny_llama, tiny_tokenizer
    from test_cls_rl import rows
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=os.path.join(root, "cls_rl"), use_cpu=True, bf16=False, report_to="none",
                      max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world_size, num_generations=2,
                      max_completion_length=6, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
                      learning_rate=5e-2)
    cls = ftplugins.compose(GRPOTrainer, [plugin], cls_rl_mode="no_think")
    trainer = cls(model=tiny_llama(), reward_funcs=[varied_reward], args=args, train_dataset=rows(),
                  processing_class=tiny_tokenizer())
    return trainer, list(trainer.train_dataset["prompt"])


def diffusion(root: str, world_size: int):
    import ftplugins
    from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny
    from ftplugins.methods.bob import plugin
    from test_bob import real_dataset

    args = DiffusionConfig(output_dir=os.path.join(root, "bob"), use_cpu=True, max_steps=STEPS, report_to="none",
                           per_device_train_batch_size=GLOBAL_BATCH // world_size, save_strategy="no",
                           disable_tqdm=True, seed=0, learning_rate=1e-2, logging_steps=1)
    cls = ftplugins.compose(DiffusionTrainer, [plugin, "ssf"], ssf_target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    trainer = cls(model=tiny.tiny_unet(), args=args, train_dataset=real_dataset(),
                  text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(), noise_scheduler=tiny.ddpm_scheduler(),
                  processing_class=tiny.tiny_tokenizer())
    return trainer, list(trainer.train_dataset["caption"])


def tabular(root: str, world_size: int):
    import ftplugins
    from ftplugins.methods.gan_augment import plugin
    from test_gan_augment import FAST, TabularClassifier, few_shot_rows
    from transformers import Trainer, TrainingArguments

    data = few_shot_rows().map(lambda r: {"labels": int(r["label"] == "b")}).select_columns(["x", "y", "labels"])
    args = TrainingArguments(output_dir=os.path.join(root, "gan_augment"), use_cpu=True, report_to="none",
                             max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world_size,
                             save_strategy="no", disable_tqdm=True, seed=0, learning_rate=5e-2, logging_steps=1,
                             dataloader_drop_last=True)
    cls = ftplugins.compose(Trainer, [plugin], **FAST, gan_augment_label_column="labels")
    torch.manual_seed(0)  # the model's initial weights, the same in the child and in the test's process
    trainer = cls(model=TabularClassifier.build(), args=args, train_dataset=data)
    return trainer, [[round(r["x"], 6), round(r["y"], 6), r["labels"]] for r in trainer.train_dataset]


BUILD = {"cls_rl": grpo, "bob": diffusion, "gan_augment": tabular}


def run_case(name: str, root: str, world_size: int):
    """Train case ``name`` into root/name with the global batch split over ``world_size`` processes."""
    trainer, rows = BUILD[name](root, world_size)
    assert trainer.args.world_size == world_size, (trainer.args.world_size, world_size)
    trainer.train()
    out = trainer.args.output_dir
    rank = save_rank_weights(trainer, out)
    with open(os.path.join(out, f"rows{rank}.json"), "w") as handle:
        json.dump({"rows": rows, "log": trainer.state.log_history}, handle)
    return trainer


def main(root: str, names: list[str]) -> None:
    run_cases_and_exit(run_case, root, names, 2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
