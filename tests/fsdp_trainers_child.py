"""cls_rl's GRPO case of ddp_trainers_child.py on 2 processes under FSDP2 on CPU (fsdp_cpu_child.py keeps
Accelerate's FSDP, which it would drop on CPU): each rank writes the whole trained weights (gathered from the
shards) and its log to ROOT/cls_rl/rank<i>.pt (tests/test_ddp_trainers.py compares them with DDP)."""

import os
import sys

import fsdp_cpu_child  # noqa: F401  (its import makes the CPU state FSDP and reports the sharding after train)
import torch
from ddp_trainers_child import grpo

from ftplugins.process_end import end_distributed_process


def main(root: str) -> None:
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    trainer, _ = grpo(root, 2)
    trainer.train()
    weights = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
               for name, p in trainer.model.named_parameters()}
    out = trainer.args.output_dir
    os.makedirs(out, exist_ok=True)
    torch.save({"weights": weights, "log": trainer.state.log_history},
               os.path.join(out, f"rank{trainer.args.process_index}.pt"))
    end_distributed_process()  # no interpreter teardown, where gloo can abort a finished rank


if __name__ == "__main__":
    main(sys.argv[1])
