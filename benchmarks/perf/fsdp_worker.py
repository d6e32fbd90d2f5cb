"""One rank of :mod:`benchmarks.perf.fsdp_memory`: trains each method row in turn and counts what this rank holds.

Run by ``accelerate launch`` with an FSDP2 config (N > 1), or as a plain process (N = 1, nothing sharded). On CPU
Accelerate 1.15 would turn the FSDP config into DDP; :func:`keep_fsdp_on_cpu` (also used by the tests'
``tests/fsdp_cpu_child.py``) makes the state FSDP again, so ``fully_shard`` really splits every decoder layer over gloo.

The counts are exact bytes of tensors (storage shared between two entries counted once), taken by a callback at
the last step: gradients just before ``optimizer.step`` (the sparse engine's compact gradient buffers included),
parameters and optimizer state just after it. A sharded parameter or gradient counts its local shard only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def keep_fsdp_on_cpu() -> None:
    """Make Accelerate's CPU state FSDP when the launch config asks for FSDP (it keeps MULTI_CPU otherwise)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = AcceleratorState.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()

    AcceleratorState.__init__ = init


def local_tensor(tensor):
    """This rank's part of ``tensor`` (its shard for a ``DTensor``)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def nbytes(tensors, seen: set) -> int:
    """Bytes of ``tensors`` not in ``seen`` (storage pointers), adding theirs."""
    total = 0
    for tensor in tensors:
        tensor = local_tensor(tensor)
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel())
        if tensor.numel() == 0 or key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def optimizer_tensors(optimizer):
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)
    for per_param in inner.state.values():
        for value in (per_param.values() if isinstance(per_param, dict) else [per_param]):
            if isinstance(value, torch.Tensor):
                yield value


def make_counter():
    from transformers import TrainerCallback

    class StateCounter(TrainerCallback):
        """Counts this rank's gradients (before the step) and parameters and optimizer state (after it)."""

        def __init__(self):
            self.trainer = None
            self.counts: dict[str, int] = {}

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            from ftplugins.sparse import sparse_optimizer_of

            model = self.trainer.model
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            engine = sparse_optimizer_of(self.trainer.optimizer)
            if engine is not None:  # the engine's compact gradients of this step (moved out of .grad by its hooks)
                grads += list(getattr(engine, "_grads", {}).values())
            self.counts["grad_bytes"] = nbytes(grads, set())

        def on_optimizer_step(self, args, state, control, **kwargs):
            from ftplugins.sparse import sparse_optimizer_of

            model = self.trainer.model
            params = list(model.parameters())
            self.counts["param_bytes"] = nbytes(params, set())
            self.counts["trainable_param_bytes"] = nbytes([p for p in params if p.requires_grad], set())
            engine = sparse_optimizer_of(self.trainer.optimizer)
            if engine is not None:
                self.counts["optimizer_bytes"] = engine.state_nbytes()
                self.counts["trained_entries"] = engine.selected_numel()
            else:
                self.counts["optimizer_bytes"] = nbytes(optimizer_tensors(self.trainer.optimizer), set())
                self.counts["trained_entries"] = sum(local_tensor(p).numel() for p in params if p.requires_grad)
            self.counts["sharded_parameters"] = sum(
                1 for p in params if hasattr(p, "to_local") and p.to_local().shape[0] < p.shape[0])

    return StateCounter()


def train_one(spec, model_name: str, steps: int, batch: int, tokens: int, world: int, seed: int) -> dict:
    """Train ``spec`` for ``steps`` steps on a fresh ``model_name`` model; this rank's counts and peak RSS."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from benchmarks.common import PeakMemory, release_memory
    from benchmarks.perf.harness import Shape, build_model, random_dataset
    from ftplugins.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    shape = Shape(batch, tokens)
    model = build_model(model_name, seed=seed)
    dataset = random_dataset(shape, batch * world * (steps + 2), model.get_input_embeddings().num_embeddings, seed)
    options = {**spec.options, **(spec.sized_options(model, shape) if spec.sized_options else {})}
    trainer_cls = ftplugins.compose(SFTTrainer, list(spec.plugins), **options)
    counter = make_counter()
    memory = PeakMemory("cpu")
    memory.reset()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftplugins-fsdp-mem-") as output_dir:
        args = SFTConfig(output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, report_to="none",
                         save_strategy="no", eval_strategy="no", max_steps=steps, per_device_train_batch_size=batch,
                         max_length=tokens, learning_rate=1e-4, lr_scheduler_type="constant", logging_steps=10**6,
                         disable_tqdm=True, dataloader_num_workers=0, seed=seed, **spec.train_args)
        kwargs = {"peft_config": spec.peft()} if spec.peft is not None else {}
        trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[counter], **kwargs)
        trainer.remove_callback(PrinterCallback)
        counter.trainer = trainer
        trainer.train()
        fsdp = bool(trainer.is_fsdp_enabled)
        del trainer, model
    seconds = time.perf_counter() - started
    peak_rss = memory.peak_above_base()
    release_memory()
    counts = counter.counts
    counts.update(persistent_bytes=counts["param_bytes"] + counts["grad_bytes"] + counts["optimizer_bytes"],
                  training_state_bytes=counts["grad_bytes"] + counts["optimizer_bytes"],
                  peak_rss_above_start_bytes=peak_rss, fsdp=fsdp, seconds=seconds)
    return counts


def main(argv: list[str]) -> None:
    """``fsdp_worker.py OUT_DIR MODEL STEPS BATCH TOKENS ROW [ROW ...]``: writes ``OUT_DIR/rank-R.json``."""
    out, model_name, steps, batch, tokens, *rows = argv
    keep_fsdp_on_cpu()
    from benchmarks.common import quiet_warnings
    from benchmarks.perf.fsdp_memory import row_specs

    quiet_warnings()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for spec in row_specs(rows):
        try:
            results[spec.name] = {"status": "ok", **train_one(spec, model_name, int(steps), int(batch), int(tokens),
                                                              world, seed=0)}
        except Exception as exc:  # noqa: BLE001 - a row that cannot train is a result; the others still run
            results[spec.name] = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(f"fsdp_worker rank {rank}/{world} {spec.name}: {results[spec.name]}", flush=True)
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "world_size": world, "rows": results}, handle, indent=2)


if __name__ == "__main__":
    from ftplugins.process_end import ends_distributed_runs

    ends_distributed_runs(main)(sys.argv[1:])  # no interpreter teardown, where gloo can abort a finished rank
