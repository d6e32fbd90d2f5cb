"""The floor: a step of the frozen base that back-propagates to the inputs only.

Every parameter-efficient method runs at least the base's forward and a backward through every layer down to
its lowest trained weight; the floor is that cost with nothing trained: all weights frozen, the gradient taken
with respect to the input embeddings only, no weight gradients and no optimizer. It runs as a plain loop (no
trainer: there is nothing to optimize), so it is a lower bound -- each method's step time and memory are shown
as multiples of it (``step_vs_floor``, ``memory_vs_floor``). It keeps the rows' activation policy: TRL's
trainers checkpoint activations by default, and a floor that kept every activation would recompute nothing and
hold more memory than the methods it bounds (measured: 449 MB against 232-432 MB for adapters at 4 x 128).
"""

from __future__ import annotations

import copy
import time

from benchmarks.common import PeakMemory, release_memory, synchronize


def floor_once(template, dataset, shape, probe_ids, args, *, device: str, warmup: int, steps: int,
               inference_repeats: int, result_cls, forward_seconds):
    """Time ``warmup + steps`` floor steps on ``dataset``'s first rows (batches of ``shape.batch``), with the
    activation checkpointing that the rows' training arguments ``args`` ask for."""
    import torch

    model = copy.deepcopy(template)
    model.requires_grad_(False)
    model.train()
    if args.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=args.activation_checkpointing_kwargs)
    ids = torch.tensor(dataset["input_ids"][: shape.batch * (warmup + steps)], device=device)
    embed = model.get_input_embeddings()
    memory = PeakMemory(device)
    memory.reset()
    synchronize(device)
    ends = [time.perf_counter()]
    for i in range(warmup + steps):
        batch = ids[i * shape.batch:(i + 1) * shape.batch]
        inputs = embed(batch).detach().requires_grad_(True)
        loss = model(inputs_embeds=inputs, labels=batch).loss
        (grad,) = torch.autograd.grad(loss, inputs)
        del grad, loss, inputs
        synchronize(device)
        ends.append(time.perf_counter())
    result = result_cls(peak_bytes=memory.peak_above_base())
    result.step_s = [ends[i + 1] - ends[i] for i in range(warmup, warmup + steps)]
    result.compute_s = list(result.step_s)
    result.inference_merged_s = forward_seconds(model, probe_ids, device, inference_repeats)
    result.merge = "base architecture"
    assert not any(p.grad is not None for p in model.parameters()), "the floor must not produce weight gradients"
    del model, ids
    release_memory()
    return result
