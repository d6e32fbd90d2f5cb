"""CLS-RL / No-Thinking-CLS-RL: classification by GRPO on verifiable rewards.

Li et al., "CLS-RL: Image Classification with Rule-Based Reinforcement Learning" (arXiv:2503.16188, later
retitled "Think or Not Think"); reference code minglllli/CLS-RL (``src/cls-rl/src/open_r1/grpo.py``, ``grpo_direct.py``).
The label is the verifiable answer: the prompt lists the class names (shuffled per example), and rewards check the
completion's format and its answer against the label. ``cls_rl_mode=no_think`` is the paper's No-Thinking variant:
the model answers directly and only an exact match is rewarded. The rewards are contributed through the
``reward_funcs`` hook, after the user's own, so ``python -m ftplugins.train grpo --plugins cls_rl`` needs no reward
argument; the prompts are built in ``transform_dataset`` from a text and a label column.

Images (the paper's setting): rows with an ``image`` column, a vision-language model and its processor, and
``cls_rl_prompt_format=conversational``; TRL's GRPO VLM path puts the image into the user turn. Tested on a tiny
Idefics3 (``ftplugins.testing.tiny_vlm``); Qwen2-VL / SmolVLM processors need torchvision for their video processor.

Where the paper is silent or the reference differs, the choices are in :mod:`.rewards` and :mod:`.prompts`.

This module stays light (no torch): the pieces are imported inside the hooks.
"""

from __future__ import annotations

from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import ClsRlOptions


class ClsRlPlugin(Plugin):
    name = "cls_rl"
    summary = "CLS-RL: GRPO rewards for classification (format + answer = label), prompts listing the class names."
    paper = "Li et al., 2025, arXiv:2503.16188"
    options = ClsRlOptions
    trainers = ("GRPOTrainer",)
    # Rewards are plain functions of the completions: every set-up GRPO runs under runs them.
    distributed = ("single", "ddp", "fsdp", "deepspeed")
    claims = {"targets": "rewards completions whose answer is the example's class label"}

    def input_columns(self, options, split):
        return [options.cls_rl_label_column, options.cls_rl_text_column or "prompt"]

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if dataset is None:
            return None
        from .prompts import build_prompts

        return build_prompts(dataset, run.options_for(self), conversational=self._conversational(run))

    @hookimpl
    def reward_funcs(self, run):
        from .rewards import rewards_for

        opts = run.options_for(self)
        return rewards_for(opts.cls_rl_mode, opts.cls_rl_label_column)

    def _conversational(self, run) -> bool:
        chosen = run.options_for(self).cls_rl_prompt_format
        if chosen != "auto":
            return chosen == "conversational"
        processing_class = run.processing_class
        if processing_class is None and run.model is not None:  # a model path: the tokenizer TRL will load
            from ftplugins.objectives.sft_tokens import run_tokenizer

            try:
                processing_class = run_tokenizer(run)
            except (FtpluginsError, OSError):
                return False  # no tokenizer saved with the model: TRL cannot render chat prompts either
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        return bool(getattr(processing_class, "chat_template", None) or getattr(tokenizer, "chat_template", None))


plugin = ClsRlPlugin()
