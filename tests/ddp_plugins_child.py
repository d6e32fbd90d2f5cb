"""Plugins under DDP in one launch (tests/test_ddp_plugins.py): each case trains a tiny SFT model for 2 steps in its
own folder, one after the other in the same process group (one `accelerate launch` pays the imports once).

``run_case`` is shared with the test, which calls it in-process with the whole global batch on one process. Each
rank writes its trainable weights (rank<r>.pt) and, for masked_thought, the training batches it saw (batches<r>.pt);
reports (soup/, probe_prune.json, mbpp_eval.json, infusion_eval.json) are the plugins' own."""

import json
import os
import random
import sys

import torch
from ddp_child_common import run_cases_and_exit, save_rank_weights

GLOBAL_BATCH, STEPS = 4, 2
# Adam's first steps divide each gradient by its own magnitude, so an entry whose gradient is ~0 moves by up to
# ±lr on fp32 rounding noise, and DDP sums gradients in another order than one process does. Measured with the
# default eps 1e-8: DDP vs 1 process differed by up to 4.2e-5 (many_icl's full fine-tune; CI failed on it) and 6.6e-7
# (bottleneck's zero-initialised up projection). eps 1e-3 bounds the update's sensitivity to the gradient by
# lr / eps: every case then within 1e-7, so the comparison tests the plugin, not the summation order.
ADAM_EPSILON = 1e-3
# Dropout off in the adapters: its masks come from each process's own generator, so no 2-process run could equal
# 1 process with it.
CASES = {
    "block_lora": dict(block_lora_n=4, block_lora_dropout=0.0),
    "bottleneck": dict(bottleneck_preset="llama_series", bottleneck_size=8, bottleneck_dropout=0.0),
    "fewshot_prefix": dict(fewshot_prefix_k=2, fewshot_prefix_pool_size=8),
    "many_icl": dict(many_icl_shots=2),
    "masked_thought": dict(masked_thought_ratio=0.5, masked_thought_warmup=0.0),
    "intruders": dict(intruders_every=1),
    "probe_prune": dict(probe_prune_probe="torch", probe_prune_units="2", probe_prune_every=1,
                        probe_prune_reverse_steps=1),
    "soup": dict(soup_last_k=2),
    "mbpp_eval": dict(mbpp_eval_max_new_tokens=4),
    "infusion_eval": dict(infusion_eval_max_new_tokens=4),
}
# Cases only other launches train (tests/deepspeed_child.py), with the same run_case.
MORE = {"ssf": {}}


def probe_rows(path: str) -> str:
    """Texts labelled by the digits they use (linearly decodable), for probe_prune.

    Every rank writes the same rows: each into its own file, then renamed over ``path``, so a rank that is still
    reading the file (in post_train) never sees it truncated by a rank that is already on its next case."""
    rng = random.Random(0)
    private = f"{path}.{os.getpid()}"
    with open(private, "w") as handle:
        for i in range(16):
            digits = "123" if i % 2 else "789"
            first, second = ("".join(rng.choice(digits) for _ in range(n)) for n in (3, 2))
            text = f"Q: {first}+{second}"
            handle.write(json.dumps({"text": text, "label": "low" if i % 2 else "high"}) + "\n")
    os.replace(private, path)
    return path


def options_for(name: str, root: str) -> dict:
    from ftplugins.eval import infusion, mbpp

    extra = {"probe_prune": lambda: dict(probe_prune_data=probe_rows(os.path.join(root, "probe_rows.jsonl"))),
             "mbpp_eval": lambda: dict(mbpp_eval_data=mbpp.TINY),
             "infusion_eval": lambda: dict(infusion_eval_data=infusion.TINY)}
    return {**{**CASES, **MORE}[name], **extra.get(name, dict)()}


class RecordBatches:
    """Keeps the input_ids and labels of every training micro-batch (masked_thought's masks are in input_ids)."""

    def __init__(self):
        self.batches = []

    def compute_loss(self, trainer, model, inputs, *args, **kwargs):
        if model.training:
            self.batches.append({k: inputs[k].detach().clone() for k in ("input_ids", "labels")})


def run_case(name: str, root: str, world_size: int):
    """Train case ``name`` into root/name with the global batch split over ``world_size`` processes."""
    import ftplugins
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer
    from trl import SFTConfig, SFTTrainer

    out = os.path.join(root, name)
    saving = dict(save_strategy="steps", save_steps=1) if name == "soup" else dict(save_strategy="no")
    args = SFTConfig(output_dir=out, use_cpu=True, bf16=False, report_to="none", max_steps=STEPS,
                     per_device_train_batch_size=GLOBAL_BATCH // world_size, learning_rate=5e-2,
                     adam_epsilon=ADAM_EPSILON, logging_steps=1, dataloader_drop_last=True, seed=0, max_length=64,
                     disable_tqdm=True, **saving)
    assert args.world_size == world_size, (args.world_size, world_size)
    recorder = RecordBatches()
    base = ftplugins.compose(SFTTrainer, [name], **options_for(name, root))

    class Recording(base):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            recorder.compute_loss(self, model, inputs)
            return super().compute_loss(model, inputs, *rest, **kwargs)

    trainer = Recording(model=tiny_llama(), args=args, train_dataset=arithmetic_dataset(16),
                        processing_class=tiny_tokenizer())
    trainer.train()
    rank = save_rank_weights(trainer, out)
    torch.save(recorder.batches, os.path.join(out, f"batches{rank}.pt"))
    return trainer


def main(root: str, names: list[str]) -> None:
    run_cases_and_exit(run_case, root, names, 2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
