"""Plugin ``mbpp_eval``: MBPP-format pass@k after training (``post_train``), metrics into the Trainer's log.

The harness itself is :mod:`ftplugins.eval.mbpp`; this module holds only the plugin object and its options, and
imports no torch (listing plugins stays cheap). Evaluation runs on the main process only (other ranks wait at
no barrier: generation is not sharded), after ``trainer.train()`` returns; the result is also written to
OUTPUT_DIR/mbpp_eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftplugins.distributed_reasons import MAIN_READS_WHOLE_FSDP, MAIN_READS_WHOLE_ZERO
from ftplugins.errors import FtpluginsError
from ftplugins.options import check_range
from ftplugins.plugin import TEXT_TRAINERS, Plugin, hookimpl


@dataclass
class MbppEvalOptions:
    mbpp_eval_data: str = field(
        default="", metadata={"help": "MBPP-format file (.jsonl/.json/.csv with text, code, test_list) to evaluate "
                                      "after training. Required."})
    mbpp_eval_n: int = field(default=1, metadata={"help": "Samples per task."})
    mbpp_eval_k: str = field(default="1", metadata={"help": "Comma-separated k of pass@k (each <= n)."})
    mbpp_eval_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature; 0 is greedy (only with n=1)."})
    mbpp_eval_max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per sample."})
    mbpp_eval_batch_size: int = field(default=8, metadata={"help": "Tasks per generate call."})
    mbpp_eval_timeout: float = field(default=10.0, metadata={"help": "Seconds each sample may run in the sandbox."})
    mbpp_eval_workers: int = field(default=1, metadata={"help": "Samples executed in parallel (one sandbox each)."})

    def __post_init__(self):
        check_range("mbpp_eval_n", self.mbpp_eval_n, 1, 10_000)
        check_range("mbpp_eval_temperature", self.mbpp_eval_temperature, 0.0, 10.0)
        check_range("mbpp_eval_max_new_tokens", self.mbpp_eval_max_new_tokens, 1, 1 << 20)
        check_range("mbpp_eval_batch_size", self.mbpp_eval_batch_size, 1, 1 << 20)
        check_range("mbpp_eval_timeout", self.mbpp_eval_timeout, 1e-3, 3600.0)
        check_range("mbpp_eval_workers", self.mbpp_eval_workers, 1, 256)


class MbppEvalPlugin(Plugin):
    name = "mbpp_eval"
    summary = "MBPP-format pass@k after training (sandboxed execution); metrics into the Trainer's log."
    paper = "Program Synthesis with Large Language Models (MBPP), Austin et al., arXiv:2108.07732"
    options = MbppEvalOptions
    trainers = TEXT_TRAINERS  # text generation: not a diffusion denoiser
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": MAIN_READS_WHOLE_FSDP, "deepspeed": MAIN_READS_WHOLE_ZERO}  # to generate

    @hookimpl
    def validate(self, run):
        from .mbpp import load_mbpp
        from .report import parse_ks

        opts = run.options_for(self)
        if not opts.mbpp_eval_data:
            raise FtpluginsError("mbpp_eval: no data to evaluate; set --mbpp_eval_data FILE (MBPP format: text, "
                                 "code, test_list).")
        ks = parse_ks(opts.mbpp_eval_k, "--mbpp_eval_k")
        if ks[-1] > opts.mbpp_eval_n:
            raise FtpluginsError(f"mbpp_eval: pass@{ks[-1]} needs n >= {ks[-1]} samples per task but "
                                 f"--mbpp_eval_n {opts.mbpp_eval_n}; raise n or lower k.")
        if opts.mbpp_eval_n > 1 and opts.mbpp_eval_temperature == 0:
            raise FtpluginsError(f"mbpp_eval: --mbpp_eval_n {opts.mbpp_eval_n} greedy samples would be identical; "
                                 "set --mbpp_eval_temperature (e.g. 0.8) or n=1.")
        load_mbpp(opts.mbpp_eval_data)  # a missing column fails before the model loads

    @hookimpl
    def post_train(self, run, trainer):
        from .mbpp import evaluate_mbpp
        from .report import parse_ks, publish_result, unwrapped_model

        if not trainer.is_world_process_zero():
            return
        opts = run.options_for(self)
        result = evaluate_mbpp(
            unwrapped_model(trainer), trainer.processing_class, opts.mbpp_eval_data, n=opts.mbpp_eval_n,
            ks=parse_ks(opts.mbpp_eval_k, "--mbpp_eval_k"), temperature=opts.mbpp_eval_temperature,
            max_new_tokens=opts.mbpp_eval_max_new_tokens, batch_size=opts.mbpp_eval_batch_size,
            timeout=opts.mbpp_eval_timeout, workers=opts.mbpp_eval_workers)
        run.state[self.name] = result
        publish_result(trainer, "mbpp", result, "mbpp_eval.json")


plugin = MbppEvalPlugin()
