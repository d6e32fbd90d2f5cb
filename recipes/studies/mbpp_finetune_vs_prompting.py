"""Study: fine-tuning vs few-shot prompting on an MBPP-format code set, scored by pass@k in the sandbox. Offline.

The seed study's lesson for low-resource programming languages: fine-tuning suits small models, in-context examples
suit large ones. The procedure, per model: split the tasks (seeded) into a train half and a test half; (a) prompt the
model with 3 train tasks as examples (the MBPP prompt) and score the test half; (b) fine-tune it on the train half
(SFT on the zero-shot MBPP prompt -> reference code) and score the test half zero-shot. Both through
``ftplugins.eval.mbpp`` (unbiased pass@k, every sample in the sandbox). Writes OUTPUT/study.json.

The harness executes Python, so a low-resource-language set must come as MBPP rows whose code and tests run under
Python (a DSL embedded in Python, or transpiled tests). Offline, the shipped tiny MBPP-format set and the tiny Llama
stand in; pass several --model folders (small and large) for the comparison the study makes.

    python recipes/studies/mbpp_finetune_vs_prompting.py --model runs/tiny-llama -o runs/study_mbpp
"""

from __future__ import annotations

import argparse
import json
import os
import random


def split_tasks(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    half = len(rows) // 2
    return [rows[i] for i in sorted(order[:half])], [rows[i] for i in sorted(order[half:])]


def finetune(model_path: str, train_rows: list[dict], output_dir: str, steps: int, learning_rate: float):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftplugins.eval.mbpp import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = Dataset.from_list([{"prompt": build_prompt(row, []), "completion": row["code"] + "\n[DONE]"}
                              for row in train_rows])
    args = SFTConfig(output_dir=output_dir, max_steps=steps, learning_rate=learning_rate, per_device_train_batch_size=4,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, max_length=512,
                     logging_steps=max(1, steps // 4))
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path), args=args, train_dataset=data,
                         processing_class=tokenizer)
    trainer.train()
    return trainer.model, tokenizer


def main(argv=None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplugins.atomic import staged_dir
    from ftplugins.eval.mbpp import TINY, evaluate_mbpp, load_mbpp
    from ftplugins.eval.report import parse_ks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="causal LM folder (repeat: small and large)")
    parser.add_argument("--data", default=TINY, help="MBPP-format .jsonl (text, code, test_list); default: tiny set")
    parser.add_argument("--n", type=int, default=1, help="samples per task")
    parser.add_argument("--k", default="1", help="comma-separated k of pass@k (each <= n)")
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="runs/study_mbpp")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ks = parse_ks(args.k, "--k")
    rows = load_mbpp(args.data)
    train_rows, test_rows = split_tasks(rows, args.seed)
    shots = train_rows[:3]
    common = dict(n=args.n, ks=ks, max_new_tokens=args.max_new_tokens, seed=args.seed)
    results = {}
    for path in args.model:
        base = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompting = evaluate_mbpp(base, tokenizer, shots + test_rows, shot_ids=[r["task_id"] for r in shots],
                                  **common)
        tuned, tokenizer = finetune(path, train_rows, os.path.join(args.output, "runs", os.path.basename(path)),
                                    args.steps, args.learning_rate)
        finetuning = evaluate_mbpp(tuned, tokenizer, test_rows, shot_ids=[], **common)
        results[path] = {"few-shot prompting": prompting["metrics"], "fine-tuning": finetuning["metrics"],
                         "parameters": sum(p.numel() for p in base.parameters())}
    study = {"data": args.data, "train_tasks": [r["task_id"] for r in train_rows],
             "test_tasks": [r["task_id"] for r in test_rows], "shots": [r["task_id"] for r in shots],
             "steps": args.steps, "models": results}
    os.makedirs(args.output, exist_ok=True)
    with staged_dir(args.output) as tmp, open(os.path.join(tmp, "study.json"), "w") as handle:
        json.dump(study, handle, indent=2)
    for path, result in results.items():
        print(f"{path}: few-shot prompting {result['few-shot prompting']}, fine-tuning {result['fine-tuning']}")
    print(f"wrote {args.output}/study.json")
    return study


if __name__ == "__main__":
    main()
