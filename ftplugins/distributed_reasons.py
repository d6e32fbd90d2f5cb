"""Why a plugin refuses a distributed mode: the reasons several plugins share, written once.

A plugin puts them in its ``distributed_refusals`` (mode -> one line naming the mechanism); the refusal error and
``ftplugins info NAME`` print them. A reason says what would break, or, where the maths allows the mode, what no
test has verified yet. Plugin-specific reasons stay in the plugin.
"""

from __future__ import annotations

#: The end of "<what> trains <something>" for a plugin with a loop of its own, outside the Trainer's step.
OWN_LOOP = "in a torch loop of its own, which does not reduce gradients across processes"

#: A loss that calls ``accelerator.unwrap_model(model)`` instead of the wrapped model.
UNWRAPPED_FORWARD = "its loss calls the unwrapped model, so DDP's forward never runs and gradients are not reduced"

#: The main process alone reads whole weights (an analysis, an evaluation) while the others wait.
MAIN_READS_WHOLE_FSDP = ("the main process alone reads the whole model while the others wait, and FSDP2 shards it "
                         "across processes")
MAIN_READS_WHOLE_ZERO = ("the main process alone reads the model's whole weights, which ZeRO-3 partitions; ZeRO-2 "
                         "keeps them whole: untested")

#: The model runs before training (selection, generation), when it is not sharded yet.
BEFORE_SHARDING_FSDP = ("runs the whole model on each device before FSDP2 shards it (fits only where no sharding is "
                        "needed); untested")
BEFORE_SHARDING_ZERO = ("runs the model before training, when ZeRO-3 may hold it partitioned already (zero.Init); "
                        "untested")

#: The sparse engine (SparseAdamW) keeps compact gradients and state and averages them itself.
SPARSE_DEEPSPEED = ("the sparse engine's compact gradients bypass .grad, which DeepSpeed's ZeRO optimizer wraps and "
                    "partitions")

#: Plugins whose only trainer is DiffusionTrainer.
DIFFUSION_FSDP = ("its only trainer, DiffusionTrainer (frozen VAE and text encoder beside the denoiser), never ran "
                  "under FSDP2")
DIFFUSION_DEEPSPEED = ("its only trainer, DiffusionTrainer (frozen VAE and text encoder beside the denoiser), never "
                       "ran under DeepSpeed")


MODE_NAMES = {"single": "one process", "ddp": "DDP", "fsdp": "FSDP2", "deepspeed": "DeepSpeed"}


def untested(mode: str, why_it_should_work: str) -> str:
    """A mode the maths allows but no test runs yet: say why it should work; it stays refused until a test runs it."""
    return f"untested under {MODE_NAMES[mode]}: {why_it_should_work}"
