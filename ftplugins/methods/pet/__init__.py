"""PET with adapters: cloze patterns + verbalisers on a frozen masked LM, only a PEFT module and the head train.

Schick & Schütze, "Exploiting Cloze Questions for Few Shot Text Classification and Natural Language Inference"
(EACL 2021, arXiv:2001.07676), in the "PETapter" formulation (PET with a PEFT module instead of full fine-tuning).
Each example is filled into every pattern with m mask tokens; a label's score is the sum over the masks of the
logits of its verbaliser tokens; softmax over the labels only; cross-entropy. The pre-trained weights stay unchanged:
the adapter (``pet_adapter``: LoRA, IA3, or another plugin's such as ``bottleneck`` / ``ssf``) and the head — a copy
of the MLM prediction transform plus the verbaliser rows of the decoder, see :mod:`.head` — train. ``predict``
ensembles the patterns (mean label probability).

Choices where the paper is silent: the all-MiniLM-L6-v2 checkpoint ships no MLM head weights (only the encoder and
pooler), so on it the prediction transform starts from the fresh initialisation of ``AutoModelForMaskedLM`` and the
decoder rows from the (tied) word embeddings; the head trains either way. Causal LMs (label word at the end) are not
built yet: BERT-family masked LMs only, refused otherwise by name.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.distributed_reasons import UNWRAPPED_FORWARD
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import PetOptions

HEAD_FILE = "pet_head.safetensors"
CONFIG_FILE = "pet.json"


class PetPlugin(Plugin):
    name = "pet"
    summary = "PET with adapters: cloze patterns + verbalisers on a frozen masked LM; adapter + verbaliser head train."
    paper = "Schick & Schütze, EACL 2021, arXiv:2001.07676"
    options = PetOptions
    trainers = ("Trainer",)
    distributed = ("single",)
    distributed_refusals = {
        "ddp": UNWRAPPED_FORWARD,
        "fsdp": "post_train saves pet_head's state_dict as it is, which FSDP2 holds sharded (one shard per process)",
        "deepspeed": "its loss calls the unwrapped model outside the DeepSpeed engine, and post_train saves pet_head, "
                     "which ZeRO-3 partitions",
    }
    claims = {"loss": "scores the labels by their verbaliser tokens at the cloze masks (softmax over labels, CE)",
              "targets": "turns each labelled example into cloze rows, one per pattern"}

    @hookimpl
    def validate(self, run):
        trl = [c.__name__ for c in (run.trainer_cls.__mro__ if run.trainer_cls else ()) if
               c.__module__.startswith("trl.")]
        if trl:
            raise FtpluginsError(f"plugin pet trains a masked LM with transformers.Trainer, not {trl[0]}; compose "
                                 "it over transformers.Trainer (ftplugins.compose(Trainer, ['pet']))")
        if not run.options_for(self).pet_verbalizer:
            raise FtpluginsError("pet needs pet_verbalizer: one 'label:word' entry per class, e.g. "
                                 "--pet_verbalizer pos:great neg:terrible")

    @hookimpl
    def peft_config(self, run, model):
        opts = run.options_for(self)
        if opts.pet_adapter == "none":
            return None
        from .head import masked_lm, prediction_transform

        prediction_transform(masked_lm(model))  # refuse a model PET cannot score before adapting it
        import peft

        if opts.pet_adapter == "lora":
            return peft.LoraConfig(r=opts.pet_lora_r, lora_alpha=2 * opts.pet_lora_r, lora_dropout=0.0,
                                   target_modules=["query", "value"])
        return peft.IA3Config(target_modules=["key", "value", "intermediate.dense"],
                              feedforward_modules=["intermediate.dense"])

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if dataset is None:
            return None
        from .cloze import encode

        return encode(dataset, run.options_for(self), self._tokenizer(run), self._verbalizer(run))

    @hookimpl
    def prepare_model(self, run, model):
        from .head import attach_head

        # PEFT left only its adapter trainable; without one, the head alone trains.
        if not hasattr(model, "peft_config"):
            model.requires_grad_(False)
        return attach_head(model, self._verbalizer(run))

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        import torch.nn.functional as F

        from .head import label_scores

        unwrapped = trainer.accelerator.unwrap_model(model)
        inputs = dict(inputs)
        targets = inputs.pop("labels")
        scores = label_scores(unwrapped, unwrapped.pet_head, inputs, self._tokenizer(run).mask_token_id)
        loss = F.cross_entropy(scores.float(), targets)
        return (loss, {"logits": scores}) if return_outputs else loss

    @hookimpl
    def post_train(self, run, trainer):
        if not trainer.args.should_save:
            return
        import json

        from safetensors.torch import save_file

        from ftplugins.atomic import staged_dir

        head = trainer.accelerator.unwrap_model(trainer.model).pet_head
        opts = run.options_for(self)
        with staged_dir(trainer.args.output_dir) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, f"{tmp}/{HEAD_FILE}")
            with open(f"{tmp}/{CONFIG_FILE}", "w") as handle:
                json.dump({"pet_verbalizer": opts.pet_verbalizer, "pet_patterns": opts.pet_patterns}, handle)

    def _tokenizer(self, run):
        from ftplugins.objectives.sft_tokens import run_tokenizer

        return run_tokenizer(run)  # processing_class, or the tokenizer saved with a model path

    def _verbalizer(self, run):
        if "pet_verbalizer" not in run.state:
            from .verbalizer import build_verbalizer

            run.state["pet_verbalizer"] = build_verbalizer(run.options_for(self).pet_verbalizer, self._tokenizer(run))
        return run.state["pet_verbalizer"]


plugin = PetPlugin()
