"""Exact-match accuracy of greedy answers on held-out prompts of each task."""

from __future__ import annotations

from benchmarks.quality import tasks


def accuracy(model, tokenizer, rows: list[dict[str, str]], task: tasks.Task, batch_size: int = 128,
             max_new_tokens: int | None = None) -> float:
    """Share of ``rows`` whose greedy completion's answer equals the reference answer exactly.

    ``max_new_tokens`` caps the task's own generation length (smoke runs: a cheap, always-wrong score).
    """
    import torch

    if not rows:
        return float("nan")
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=min(task.max_new_tokens, max_new_tokens or task.max_new_tokens), do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(tasks.answer_of(text.strip(), task.steps) == row["answer"] for row, text in zip(chunk, texts))
    return correct / len(rows)


def task_accuracies(model, tokenizer, names: list[str], n: int, seed: int, exclude: set[str] | None = None,
                    max_new_tokens: int | None = None) -> dict[str, float]:
    """Accuracy on ``n`` held-out prompts of each task in ``names`` (the same prompts for every model)."""
    return {name: accuracy(model, tokenizer, tasks.held_out(name, n, seed, exclude), tasks.TASKS[name],
                           max_new_tokens=max_new_tokens)
            for name in names}
