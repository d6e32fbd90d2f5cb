"""One rank of the s3ft two-process (gloo, CPU) check: build the trainer, dump what this rank trains on."""

import json
import os
import sys

import torch
from trl import SFTConfig, SFTTrainer

import ftplugins
from ftplugins.methods.s3ft import plugin
from ftplugins.process_end import end_distributed_process
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer


def odd_length(prediction, gold):
    return len(prediction) % 2 == 1


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    args = SFTConfig(output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", max_steps=1,
                     per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True, max_length=64)
    assert args.world_size == 2, args.world_size
    cls = ftplugins.compose(SFTTrainer, [plugin], s3ft_judge=odd_length, s3ft_max_new_tokens=8, s3ft_batch_size=4)
    trainer = cls(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(12),
                  processing_class=tiny_tokenizer())
    report = trainer.ftplugins_run.state["s3ft"]["report"]
    rank = args.process_index
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"report": report, "input_ids": list(trainer.train_dataset["input_ids"])}, handle)
    trainer.train()
    end_distributed_process()  # no interpreter teardown, where gloo can abort a finished rank


if __name__ == "__main__":
    main(sys.argv[1])
