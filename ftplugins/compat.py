"""Every private transformers / TRL / Accelerate / PEFT API ftplugins relies on, in one module.

Plugins never touch a Trainer's internals: they implement hooks (:mod:`ftplugins.hookspecs`), and
this module turns the Trainer's private methods into those hook calls (:class:`TrainerInternals`)
and wraps the few private helpers the methods use. Each use says what it relies on, and
:data:`RELIED_ON` lists them all with the parameters we call them with: ``tests/test_compat.py``
checks every entry against the installed releases and names the upstream change when one breaks.
When it fails after an upgrade, fix the one function here, not the plugins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Upstream:
    """One private API: where it lives, the parameters we pass or override, and what we rely on."""

    path: str  # "module:Qualified.name"
    parameters: tuple[str, ...]  # names the callable must accept (empty: an attribute, not called)
    relies_on: str


RELIED_ON: list[Upstream] = [
    Upstream("transformers.trainer:Trainer._prepare_for_training",
             ("max_steps", "train_dataloader", "resume_from_checkpoint"),
             "creates the optimizer (when not delayed) and then wraps the model with accelerator.prepare / "
             "prepare_model: TrainerInternals._prepare_for_training answers skip_ddp_wrapper there"),
    Upstream("accelerate:Accelerator.prepare_model", ("model", "device_placement", "evaluation_mode"),
             "evaluation_mode=True prepares placement / mixed precision without a DDP wrapper; patched on the "
             "accelerator instance for the duration of _prepare_for_training (skip_ddp_wrapper)"),
    Upstream("transformers.trainer:Trainer._clip_grad_norm", ("model",),
             "called once per optimizer step when max_grad_norm > 0; returns the pre-clip norm (grad_norm hook)"),
    Upstream("transformers.trainer:Trainer._get_grad_norm", ("model", "grad_norm"),
             "called once per optimizer step after _clip_grad_norm with its result, or None (grad_norm hook)"),
    Upstream("transformers.trainer:Trainer._load_optimizer_and_scheduler", ("checkpoint",),
             "loads the optimizer / scheduler state when resuming (load_optimizer_state hook)"),
    Upstream("transformers.trainer:Trainer._set_signature_columns_if_needed", (),
             "fills self._signature_columns (the columns remove_unused_columns keeps) when it is None "
             "(dataset_columns hook)"),
    Upstream("transformers.trainer:Trainer._prepare_inputs", ("inputs",),
             "moves a collated batch to the device, as the training loop does (phase loops of lt_sft, graft)"),
    Upstream("transformers.trainer:Trainer._save", ("output_dir", "state_dict"),
             "writes the model files of save_model / checkpoints (composition stages it atomically)"),
    Upstream("transformers.trainer:Trainer._load_from_checkpoint", ("resume_from_checkpoint", "model"),
             "loads the model weights of a checkpoint when resuming; DiffusionTrainer reads the diffusers layout "
             "(diffusion_pytorch_model.safetensors) there (DiffusersCheckpointLoading) and leaves the rest to it"),
    Upstream("transformers.trainer:Trainer.end", (),
             "tears the process group down at the end of a script (composition waits for every rank first)"),
    Upstream("trl.trainer.utils:create_model_from_path", ("model_id",),
             "loads a model path the way TRL trainers do, taking from_pretrained kwargs"),
    Upstream("trl.trainer.utils:add_fused_lm_head", ("model",),
             "patches a causal LM so that forward(fused_lm_head=True) returns per-token log_probs / label_mask "
             "(reference log-probs, deep_align)"),
    Upstream("trl.trainer.sft_trainer:DataCollatorForLanguageModeling", ("pad_token_id", "padding_free"),
             "SFTTrainer's own collator for tokenized rows (deep_align's reference pass)"),
    Upstream("peft.mapping:PEFT_TYPE_TO_CONFIG_MAPPING", (),
             "peft_type string -> config class; written to register out-of-tree PEFT types (peft_types)"),
    Upstream("peft.mapping:PEFT_TYPE_TO_TUNER_MAPPING", (), "peft_type string -> tuner class (peft_types)"),
    Upstream("peft.mapping:PEFT_TYPE_TO_PREFIX_MAPPING", (), "peft_type string -> parameter prefix (peft_types)"),
    # PEFT's tuner subclassing interface: every in-tree tuner overrides these, and so do ours (ssf, block_lora,
    # bottleneck); they stay in the tuners, checked here.
    Upstream("peft.tuners.tuners_utils:BaseTuner._create_and_replace",
             ("peft_config", "adapter_name", "target", "target_name", "parent", "current_key"),
             "called once per matched module to wrap it in the tuner's layer"),
    Upstream("peft.tuners.tuners_utils:BaseTuner._prepare_adapter_config", ("peft_config", "model_config"),
             "completes a config (default target modules) before injection"),
    Upstream("peft.tuners.tuners_utils:BaseTuner._prepare_model", ("peft_config", "model"),
             "prepares the model before injection (ftplugins.tuners.FtTuner: bitsandbytes' CPU 4-bit guard)"),
    Upstream("peft.tuners.tuners_utils:BaseTuner._check_merge_allowed", (),
             "raises when the adapter cannot merge (our tuners add their own conditions)"),
    Upstream("peft.tuners.tuners_utils:BaseTuner._replace_module", ("parent", "child_name", "new_module", "child"),
             "puts the tuner layer in place of the base module"),
    Upstream("peft.tuners.tuners_utils:BaseTuner._remove_adapter_name_from_key", ("key", "adapter_name"),
             "maps state-dict keys of a saved adapter (bottleneck's block adapters)"),
    Upstream("peft.tuners.tuners_utils:BaseTunerLayer._move_adapter_to_device_of_base_layer", ("adapter_name",),
             "moves a new adapter's parameters to the base layer's device and dtype"),
    Upstream("peft.tuners.tuners_utils:BaseTunerLayer._cast_input_dtype", ("x", "dtype"),
             "casts a layer input to the adapter's dtype unless autocast is on"),
]
# Also relied on, checked by tests/test_compat.py on a built trainer: TRL trainers keep their logged
# metrics in ``trainer._metrics[mode][name]`` (lists averaged at each log), and Trainer keeps the columns
# to keep in ``trainer._signature_columns``.


class TrainerInternals:
    """The Trainer's private methods ftplugins overrides, each turned into a hook call.

    A base of :class:`ftplugins.composition.PluginTrainerMixin`; ``self._ftplugins_run`` is the run.
    """

    _ftplugins_grad_norm_asked = False

    def _prepare_for_training(self, *args: Any, **kwargs: Any):
        # Relies on: the model is wrapped through accelerator.prepare_model inside this method, after the
        # optimizer exists (not with FSDP / DeepSpeed, which no skip_ddp_wrapper plugin supports).
        with _prepare_model_asking(self):
            return super()._prepare_for_training(*args, **kwargs)

    def _clip_grad_norm(self, model: Any):
        # Relies on: called once per optimizer step when max_grad_norm > 0, before _get_grad_norm.
        norm = self._ftplugins_run.call("grad_norm", trainer=self, model=model)
        self._ftplugins_grad_norm_asked = True
        return super()._clip_grad_norm(model) if norm is None else norm

    def _get_grad_norm(self, model: Any, grad_norm: Any = None):
        # Relies on: called once per optimizer step, with _clip_grad_norm's result when it ran.
        asked, self._ftplugins_grad_norm_asked = self._ftplugins_grad_norm_asked, False
        if grad_norm is None and not asked:
            grad_norm = self._ftplugins_run.call("grad_norm", trainer=self, model=model)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
        # Relies on: called with the checkpoint folder when resuming (None otherwise) before the first step.
        if checkpoint is not None:
            self._ftplugins_run.call("load_optimizer_state", trainer=self, checkpoint=checkpoint)
        return super()._load_optimizer_and_scheduler(checkpoint)

    def _set_signature_columns_if_needed(self) -> None:
        # Relies on: sets self._signature_columns (a list, or leaves None) that _remove_unused_columns keeps.
        super()._set_signature_columns_if_needed()
        extra = self._ftplugins_run.call("dataset_columns", trainer=self)
        if self._signature_columns is not None:
            kept = self._signature_columns
            self._signature_columns = [*kept, *(column for column in extra if column not in kept)]



class DiffusersCheckpointLoading:
    """Resuming from a checkpoint saved in diffusers' layout (:class:`ftplugins.diffusion.DiffusionTrainer`).

    ``Trainer._load_from_checkpoint`` knows transformers' weight file names only; when the checkpoint holds
    ``diffusion_pytorch_model.safetensors`` the trainer's ``load_diffusers_weights(folder, model)`` reads it.
    """

    DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # Relies on: Trainer calls this with the checkpoint folder (and model=None) when resuming.
        import os

        if os.path.isfile(os.path.join(resume_from_checkpoint, self.DIFFUSERS_WEIGHTS)):
            return self.load_diffusers_weights(resume_from_checkpoint, model if model is not None else self.model)
        return super()._load_from_checkpoint(resume_from_checkpoint, model=model)


@contextlib.contextmanager
def _prepare_model_asking(trainer: Any) -> Iterator[None]:
    """While the block runs, ``accelerator.prepare_model`` asks the ``skip_ddp_wrapper`` hook and, when a plugin
    says so, prepares with ``evaluation_mode=True``: Accelerate's switch for "placement, mixed precision and
    compilation, no distributed wrapper" (transformers uses it for models that own their gradient reduction)."""
    accelerator = trainer.accelerator
    own = vars(accelerator).get("prepare_model")
    prepare_model = accelerator.prepare_model

    def prepare_model_asking(model, device_placement=None, evaluation_mode=False):
        if not evaluation_mode and trainer._ftplugins_run.call("skip_ddp_wrapper", trainer=trainer):
            evaluation_mode = True
        return prepare_model(model, device_placement=device_placement, evaluation_mode=evaluation_mode)

    accelerator.prepare_model = prepare_model_asking
    try:
        yield
    finally:
        if own is None:
            del accelerator.prepare_model
        else:
            accelerator.prepare_model = own


def prepare_inputs(trainer: Any, batch: Any) -> Any:
    """A collated batch on the trainer's device, as its training loop prepares it (``Trainer._prepare_inputs``)."""
    return trainer._prepare_inputs(batch)


def trainer_metrics(trainer: Any, mode: str = "train") -> Any:
    """TRL's per-mode metric lists (``trainer._metrics[mode]``, averaged at each log), or ``None`` for trainers
    without them (transformers' own ``Trainer``)."""
    metrics = getattr(trainer, "_metrics", None)
    return metrics.get(mode) if isinstance(metrics, dict) else None


def create_model_from_path(path: str, **kwargs: Any) -> Any:
    """Load ``path`` as TRL trainers do (``trl.trainer.utils.create_model_from_path``)."""
    from trl.trainer.utils import create_model_from_path as load

    return load(path, **kwargs)


def add_fused_lm_head(model: Any) -> Any:
    """Patch a causal LM so that ``forward(fused_lm_head=True)`` returns per-token ``log_probs`` and ``label_mask``
    without [batch, seq, vocab] logits (``trl.trainer.utils.add_fused_lm_head``, what SFTTrainer applies)."""
    from trl.trainer.utils import add_fused_lm_head as patch

    return patch(model)


def is_fused_lm_head_patched(model: Any) -> bool:
    """Whether ``add_fused_lm_head`` patched ``model`` (an unwrapped causal LM). Relies on TRL 1.16 patching by
    setting an instance ``forward`` that takes a ``fused_lm_head`` argument and returns ``log_probs`` /
    ``label_mask`` (tests/test_compat.py checks both)."""
    forward = vars(model).get("forward")
    code = getattr(getattr(forward, "__func__", forward), "__code__", None)
    if code is None:
        return False
    return "fused_lm_head" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def sft_collator(pad_token_id: int, padding_free: bool = False) -> Any:
    """SFTTrainer's collator for tokenized rows (``trl.trainer.sft_trainer.DataCollatorForLanguageModeling``)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=padding_free)


def peft_type_mappings() -> tuple[dict, dict, dict]:
    """PEFT's peft_type -> (config class, tuner class, prefix) dicts, which out-of-tree types are written into
    (``peft.register_peft_method`` refuses types PEFT does not know in peft 0.21)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING
