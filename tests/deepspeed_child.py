"""Plugins under DeepSpeed ZeRO (tests/test_deepspeed.py): SFT cases of tests/ddp_plugins_child.py and cls_rl
(GRPO) of tests/ddp_trainers_child.py, one after the other in ONE `accelerate launch --use_deepspeed` (or a plain DDP
launch, the reference of the plugins that draw random numbers per process). After training, each case saves its
model with ``trainer.save_model`` into root/name/saved: under ZeRO-3 the full weights gathered from the partitions
(the launch sets ``zero3_save_16bit_model``, which keeps the fp32 dtype of a run without mixed precision); each
rank writes what its engine was (engine<r>.json: ZeRO stage, optimizer, the parameter elements it owns)."""

import json
import os
import sys

import torch
from ddp_child_common import run_cases_and_exit


def without_shm_comm_op() -> None:
    """Use gloo for DeepSpeed's collectives instead of its shared-memory op, which DeepSpeed JIT-compiles with the
    local C++ compiler on first use (about 75 s of CPU here; 1-4 min on 2 busy cores). The op only speeds up
    intra-node all-reduce; the partitioning and the optimizer under test are the same either way."""
    import deepspeed.ops

    ops = deepspeed.ops.__compatible_ops__  # DeepSpeed probes once per process and keeps this dict
    assert "deepspeed_shm_comm" in ops, f"DeepSpeed {deepspeed.__version__} renamed its shm op: {sorted(ops)}"
    ops["deepspeed_shm_comm"] = False


def run_case(name: str, root: str, world_size: int):
    """Train case ``name`` into root/name (``world_size`` processes share the global batch), then save the model."""
    import ddp_plugins_child
    import ddp_trainers_child

    child = ddp_trainers_child if name == "cls_rl" else ddp_plugins_child
    trainer = child.run_case(name, root, world_size)
    trainer.save_model(os.path.join(root, name, "saved"))
    engine = trainer.model_wrapped  # DeepSpeedEngine under DeepSpeed, DistributedDataParallel under DDP
    seen = {"engine": type(engine).__name__, "optimizer": type(getattr(engine, "optimizer", None)).__name__,
            "stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
            "clipping": engine.gradient_clipping() if hasattr(engine, "gradient_clipping") else None,
            # ZeRO-3: the slice of every parameter this rank owns (the parameters themselves are gathered per use)
            "partition_numel": sum(p.ds_tensor.numel() for p in trainer.model.parameters()
                                   if hasattr(p, "ds_tensor")),
            "numel": sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters()),
            "tensors": len(list(trainer.model.parameters()))}
    with open(os.path.join(root, name, f"engine{trainer.args.process_index}.json"), "w") as handle:
        json.dump(seen, handle)
    return trainer


def main(root: str, names: list[str]) -> None:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        without_shm_comm_op()
    run_cases_and_exit(run_case, root, names, 2)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2].split(","))
