"""One rank of an FSDP2 run on CPU: `python -m ftplugins.train ARGS`, with the model really sharded.

Accelerate (1.15) turns ``ACCELERATE_USE_FSDP`` into FSDP only for accelerator-backed set-ups: with ``use_cpu``
it keeps ``MULTI_CPU`` and wraps the model in DDP, so an FSDP2 config on CPU silently trains unsharded. This
child makes the CPU state FSDP (the plugin the config describes), so torch's ``fully_shard`` shards every
decoder layer over gloo as it would over NCCL; it then prints how the trained model was held, for the test.
"""

import os
import sys

import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's benchmarks/
from benchmarks.perf.fsdp_worker import keep_fsdp_on_cpu  # noqa: E402  (one copy of the workaround, shared)

_train = transformers.Trainer.train


class _StateAfterStep1(transformers.TrainerCallback):
    """Prints the sparse engine's state on this process after the first optimizer step, before any refresh or
    re-selection could rebuild it (the state as Accelerate's prepare handed it over)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        from ftplugins.sparse import sparse_optimizer_of

        sparse = sparse_optimizer_of(self.trainer.optimizer)
        if state.global_step == 1 and sparse is not None:
            print(f"fsdp_cpu_child: rank={args.process_index} at_step=1 sparse_state_entries={sparse.selected_numel()} "
                  f"sparse_state_bytes={sparse.state_nbytes()}", flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        from ftplugins.sparse import sparse_optimizer_of

        sparse = sparse_optimizer_of(self.trainer.optimizer)
        if sparse is not None and sparse.step_in_backward:
            print(f"fsdp_cpu_child: rank={args.process_index} late_grads={sparse.late_grads} "
                  f"grad_buffers={len(sparse._grad_buffers)}", flush=True)


def _train_and_report(self, *args, **kwargs):
    self.add_callback(_StateAfterStep1(self))
    result = _train(self, *args, **kwargs)
    from torch.distributed.tensor import DTensor

    sharded = [name for name, p in self.model.named_parameters()
               if isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0]]
    print(f"fsdp_cpu_child: is_fsdp_enabled={self.is_fsdp_enabled} sharded_parameters={len(sharded)}", flush=True)
    from ftplugins.sparse import sparse_optimizer_of

    sparse = sparse_optimizer_of(self.optimizer)
    if sparse is not None:  # the sparse engine's state on this process (its rows only under FSDP2)
        print(f"fsdp_cpu_child: rank={self.args.process_index} sparse_state_entries={sparse.selected_numel()} "
              f"sparse_state_bytes={sparse.state_nbytes()}", flush=True)
    return result


keep_fsdp_on_cpu()
transformers.Trainer.train = _train_and_report

if __name__ == "__main__":
    from ftplugins.train import main

    main(sys.argv[1:])
