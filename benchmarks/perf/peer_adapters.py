"""AdapterHub ``adapters`` vs PEFT LoRA r=16, run inside the peer environment (transformers 4.57).

Started by ``python -m benchmarks.perf --peer adapters`` (see :mod:`benchmarks.perf.peer`); it
imports no ftplugins. Same Llama shape (from ``--model-json``), random token batches, warm-up
and timed steps, interleaved repetitions and memory probe as the main harness; the loop is
``transformers.Trainer.train()`` (TRL is not installed here) with the same step-time callback.
Configurations: AdapterHub's SeqBn (Pfeiffer), DoubleSeqBn (Houlsby) and ParBn, reduction factor
16, against PEFT LoRA r=16 on every linear layer.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

from benchmarks.common import PeakMemory, machine_info, median, offline_environment, quiet_warnings, release_memory
from benchmarks.perf.harness import Shape, make_step_timer, state_bytes

ROWS = ("peft-lora-r16", "SeqBn", "DoubleSeqBn", "ParBn")


def build(row: str, template):
    model = copy.deepcopy(template)
    if row == "peft-lora-r16":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    import adapters

    adapters.init(model)
    config = getattr(adapters, f"{row}Config")(reduction_factor=16)
    model.add_adapter("bench", config=config)
    model.train_adapter("bench")
    return model


class RandomTokens:
    """A map-style dataset of fixed random sequences, labels = inputs (causal LM loss)."""

    def __init__(self, shape: Shape, rows: int, vocab: int, seed: int):
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (rows, shape.tokens), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train_once(row, template, dataset, shape, *, warmup, steps, seed, checkpointing=False):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    model = build(row, template)
    timer = make_step_timer("cpu")
    with tempfile.TemporaryDirectory(prefix="ftplugins-peer-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            max_steps=warmup + steps, per_device_train_batch_size=shape.batch, learning_rate=1e-4,
            lr_scheduler_type="constant", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0,
            seed=seed, remove_unused_columns=False,
            # our rows' activation policy (TRL checkpoints by default, non-reentrant in transformers 5): without it
            # the peer's step skips the recomputation ours pays and holds every activation, not a like-for-like pair
            gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)
        memory = PeakMemory("cpu")
        memory.reset()
        trainer.train()
        peak = memory.peak_above_base()
        step_s, _ = timer.timed(warmup)
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        out = {"step_s": step_s, "peak_bytes": peak, "trainable_params": sum(p.numel() for p in trainable),
               "optimizer_state_bytes": state_bytes(trainer.optimizer)}
        del trainer, model, trainable
    release_memory()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.peer_adapters")
    parser.add_argument("--model-json", required=True)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="checkpoint activations as the ftplugins rows do (TRL's default)")
    args = parser.parse_args()
    offline_environment()
    quiet_warnings()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    shape_config = json.loads(args.model_json)
    name = shape_config.pop("name")
    torch.manual_seed(args.seed)
    template = LlamaForCausalLM(LlamaConfig(max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0,
                                            bos_token_id=1, eos_token_id=2, **shape_config))
    results = {}
    for shape in (Shape.parse(s) for s in args.batch.split(",")):
        dataset = RandomTokens(shape, shape.batch * (args.warmup + args.steps), shape_config["vocab_size"], args.seed)
        train_once(ROWS[0], template, dataset, shape, warmup=1, steps=1, seed=args.seed,
                   checkpointing=args.activation_checkpointing)  # process warm-up
        runs = {row: [] for row in ROWS}
        for rep in range(args.repeats):
            for row in ROWS:
                started = time.perf_counter()
                run = train_once(row, template, dataset, shape, warmup=args.warmup, steps=args.steps, seed=args.seed,
                                 checkpointing=args.activation_checkpointing)
                runs[row].append(run)
                print(f"  [peer {shape}] rep {rep + 1}/{args.repeats} {row:<14} step {median(run['step_s']) * 1e3:8.1f} ms"
                      f"  peak +{(run['peak_bytes'] or 0) / 2**20:8.1f} MB  ({time.perf_counter() - started:.1f} s)",
                      flush=True)
        rows = {}
        for row, rs in runs.items():
            rows[row] = {"step_s": median(s for r in rs for s in r["step_s"]),
                         "peak_train_bytes": median(r["peak_bytes"] for r in rs if r["peak_bytes"] is not None),
                         "trainable_params": rs[0]["trainable_params"],
                         "optimizer_state_bytes": rs[0]["optimizer_state_bytes"]}
        lora = rows["peft-lora-r16"]
        for row in rows.values():
            row["step_vs_lora-r16"] = row["step_s"] / lora["step_s"]
            row["memory_vs_lora-r16"] = row["peak_train_bytes"] / lora["peak_train_bytes"]
        results[str(shape)] = {"methods": rows}
    result = {
        "config": {"model": name, "loop": "transformers.Trainer.train(), same step-time callback and memory probe",
                   "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                   "activation_checkpointing": args.activation_checkpointing},
        "machine": machine_info("cpu", packages=["adapters"]),
        "results": results,
    }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
