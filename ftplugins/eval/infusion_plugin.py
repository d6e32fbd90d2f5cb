"""Plugin ``infusion_eval``: knowledge-infusion accuracy per question kind after training (``post_train``).

The harness is :mod:`ftplugins.eval.infusion` (FineTuneBench format); this module holds the plugin object and its
options and imports no torch. Typical run: train on the memorization questions (``ftplugins eval infusion-train
facts.jsonl --data facts.csv`` writes them) with ``--plugins infusion_eval --infusion_eval_data facts.csv``; after
training the main process answers every question, logs ``infusion/accuracy/<kind>`` through the Trainer and writes
OUTPUT_DIR/infusion_eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftplugins.distributed_reasons import MAIN_READS_WHOLE_FSDP, MAIN_READS_WHOLE_ZERO
from ftplugins.errors import FtpluginsError
from ftplugins.options import check_range
from ftplugins.plugin import TEXT_TRAINERS, Plugin, hookimpl


@dataclass
class InfusionEvalOptions:
    infusion_eval_data: str = field(
        default="", metadata={"help": "Questions to ask after training: a CSV with prompt, answer, kind; or "
                                      "comma-separated KIND=FILE.csv (FineTuneBench's one file per kind). Required."})
    infusion_eval_judge: str = field(
        default="auto", metadata={"help": "auto (numeric for number answers, else normalized), normalized, numeric, "
                                          "exact, or pkg.mod:func (s3ft's judges)."})
    infusion_eval_template: str = field(
        default="Question: {prompt}\nAnswer:",
        metadata={"help": "Prompt for each question ('{prompt}' replaced); use the format the model was trained on."})
    infusion_eval_max_new_tokens: int = field(default=32, metadata={"help": "Answer budget (greedy; first line)."})
    infusion_eval_batch_size: int = field(default=16, metadata={"help": "Questions per generate call."})

    def __post_init__(self):
        check_range("infusion_eval_max_new_tokens", self.infusion_eval_max_new_tokens, 1, 1 << 20)
        check_range("infusion_eval_batch_size", self.infusion_eval_batch_size, 1, 1 << 20)


def _sources(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


class InfusionEvalPlugin(Plugin):
    name = "infusion_eval"
    summary = "Knowledge infusion (FineTuneBench format): accuracy per question kind after training, into the log."
    paper = ("FineTuneBench: How well do commercial fine-tuning APIs infuse knowledge into LLMs?, Wu et al., "
             "arXiv:2411.05059")
    options = InfusionEvalOptions
    trainers = TEXT_TRAINERS  # text generation: not a diffusion denoiser
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": MAIN_READS_WHOLE_FSDP, "deepspeed": MAIN_READS_WHOLE_ZERO}  # to generate

    @hookimpl
    def validate(self, run):
        from .infusion import load_facts, resolve

        opts = run.options_for(self)
        if not opts.infusion_eval_data:
            raise FtpluginsError("infusion_eval: no questions to ask; set --infusion_eval_data FILE.csv (columns "
                                 "prompt, answer, kind) or KIND=FILE.csv,...")
        resolve(opts.infusion_eval_judge, option="infusion_eval_judge")
        load_facts(_sources(opts.infusion_eval_data))  # a missing column fails before the model loads

    @hookimpl
    def post_train(self, run, trainer):
        from .infusion import evaluate_infusion, load_facts
        from .report import publish_result, unwrapped_model

        if not trainer.is_world_process_zero():
            return
        opts = run.options_for(self)
        result = evaluate_infusion(
            unwrapped_model(trainer), trainer.processing_class, load_facts(_sources(opts.infusion_eval_data)),
            judge=opts.infusion_eval_judge, template=opts.infusion_eval_template,
            max_new_tokens=opts.infusion_eval_max_new_tokens, batch_size=opts.infusion_eval_batch_size)
        run.state[self.name] = result
        publish_result(trainer, "infusion", result, "infusion_eval.json")


plugin = InfusionEvalPlugin()
