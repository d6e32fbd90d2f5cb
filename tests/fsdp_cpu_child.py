"""One rank of an FSDP2 run on CPU: `python -m ftplugins.train ARGS`, with the model really sharded.

Accelerate (1.15) turns ``ACCELERATE_USE_FSDP`` into FSDP only for accelerator-backed set-ups: with ``use_cpu``
it keeps ``MULTI_CPU`` and wraps the model in DDP, so an FSDP2 config on CPU silently trains unsharded. This
child makes the CPU state FSDP (the plugin the config describes), so torch's ``fully_shard`` shards every
decoder layer over gloo as it would over NCCL; it then prints how the trained model was held, for the test.
"""

import os
import sys

import transformers
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs):
    _state_init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()


_train = transformers.Trainer.train


def _train_and_report(self, *args, **kwargs):
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


AcceleratorState.__init__ = _fsdp_on_cpu
transformers.Trainer.train = _train_and_report

if __name__ == "__main__":
    from ftplugins.train import main

    main(sys.argv[1:])
