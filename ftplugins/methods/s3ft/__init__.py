"""S3FT: Selective Self-to-Supervised Fine-Tuning (Gupta et al., arXiv:2502.08130; no official code).

Before training, the frozen initial model M0 answers every train prompt (greedy). Where a judge accepts the
answer against the gold one, the answer becomes the target; otherwise M0 rephrases the gold answer and the
paraphrase is the target if the judge accepts it; otherwise the gold answer stays. Then plain SFT on the
new targets, with the SFT baseline's hyper-parameters (the paper's point: training on the model's own
wording of a correct answer forgets less). Branches and judges: :mod:`.construct`, :mod:`.judges`.

* Plugin: a ``transform_dataset`` hook on the train split. The composed trainer calls it after the model is
  loaded and before the base trainer's ``__init__`` -- so before any optimizer exists or any step ran:
  ``run.model`` is M0 (with an adapter plugin or ``peft_config``, M0 is the base model the adapter starts
  from as identity). Eval splits are left alone (they are evaluated on gold answers).
* Python, without a trainer: :func:`build_dataset` (``model, tokenizer, dataset, judge=...``) returns the
  dataset and the branch report.

Each generation batch is cached as a JSONL chunk under ``s3ft_cache_dir`` (default OUTPUT_DIR/s3ft_cache),
keyed by the model's weights, tokenizer, options and rows, so a killed run resumes where it stopped.
The branch report (rows per source) goes to the log and to OUTPUT_DIR/s3ft_report.json.

Distributed (DDP): the main process constructs first (``args.main_process_first``) and the others then read
its cache, so they train on identical targets without generating; with ``s3ft_cache=false`` every process
constructs on its own (greedy, hence the same targets). The others wait in a barrier meanwhile: raise
``ddp_timeout`` above the construction time, or build the cache first in one process (same options and
``s3ft_cache_dir``) so the distributed run only reads it. FSDP / DeepSpeed are not declared: generation
needs the whole model in one process before the trainer shards it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from ftplugins.distributed_reasons import BEFORE_SHARDING_FSDP, BEFORE_SHARDING_ZERO
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import S3ftOptions

logger = logging.getLogger("ftplugins.s3ft")


def build_dataset(model: Any, tokenizer: Any, dataset: Any, judge: Any = "normalized", **kwargs: Any):
    """(dataset with S3FT targets, branch report); see :func:`.construct.build_dataset` (imports torch lazily)."""
    from .construct import build_dataset as _build

    return _build(model, tokenizer, dataset, judge, **kwargs)


class S3ftPlugin(Plugin):
    name = "s3ft"
    summary = ("S3FT: train on the initial model's own answers where a judge accepts them, else on its "
               "paraphrase of the gold answer, else on the gold answer.")
    paper = ("Selective Self-to-Supervised Fine-Tuning for Generalization in Large Language Models, Gupta et al., "
             "arXiv:2502.08130")
    options = S3ftOptions
    # One plugin per role of a run (ftplugins.combinations): a second plugin claiming one is refused.
    claims = {
        "targets": "replaces the gold answers by the initial model's own",
    }
    trainers = ("SFTTrainer",)
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": BEFORE_SHARDING_FSDP, "deepspeed": BEFORE_SHARDING_ZERO}  # generation

    @hookimpl
    def validate(self, run):
        from .judges import resolve_judge

        opts = run.options_for(self)
        resolve_judge(opts.s3ft_judge)  # a misspelled judge fails before the model loads

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if split != "train":
            return None
        from ftplugins.objectives.sft_tokens import run_tokenizer

        from .construct import build_dataset as _build

        opts, args, model = run.options_for(self), run.args, run.model
        if model is None or not hasattr(model, "generate"):
            raise FtpluginsError(
                f"s3ft generates targets with the initial model before training, but the trainer's model is "
                f"{type(model).__name__}; pass a causal LM (or its path) as model= (model_init is not supported)."
            )
        cache_dir = None
        if opts.s3ft_cache:
            cache_dir = opts.s3ft_cache_dir or os.path.join(getattr(args, "output_dir", None) or ".", "s3ft_cache")
        with _main_process_first(args, opts.s3ft_cache), _on_training_device(model, args):
            data, report = _build(
                model, run_tokenizer(run), dataset, opts.s3ft_judge,
                paraphrase=opts.s3ft_paraphrase, paraphrase_template=opts.s3ft_paraphrase_template,
                max_new_tokens=opts.s3ft_max_new_tokens, batch_size=opts.s3ft_batch_size, cache_dir=cache_dir,
                tests_column=opts.s3ft_code_tests_column, code_timeout=opts.s3ft_code_timeout,
                show_progress=not getattr(args, "disable_tqdm", False) and _is_main(args),
            )
        run.state[self.name] = {"report": report}
        if args is not None and _is_main(args):
            write_report(args.output_dir, report)
        return data


def write_report(output_dir: str, report: dict) -> None:
    """OUTPUT_DIR/s3ft_report.json, published atomically."""
    from ftplugins.atomic import staged_dir

    with staged_dir(output_dir) as tmp, open(os.path.join(tmp, "s3ft_report.json"), "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)


def _is_main(args: Any) -> bool:
    return int(getattr(args, "process_index", 0) or 0) == 0


def _main_process_first(args: Any, cached: bool):
    """The main process builds (and caches) first; the others then read its chunks."""
    if cached and args is not None and int(getattr(args, "world_size", 1) or 1) > 1:
        return args.main_process_first(local=False, desc="s3ft dataset construction")
    return contextlib.nullcontext()


@contextlib.contextmanager
def _on_training_device(model: Any, args: Any):
    """Generate on the device the trainer will train on (a GPU), then put the model back where it was.

    Models placed by ``device_map`` or quantized are left where they are (they cannot or need not move).
    """
    target = getattr(args, "device", None) if args is not None else None
    movable = not getattr(model, "hf_device_map", None) and not getattr(model, "is_quantized", False)
    try:
        current = next(model.parameters()).device
    except StopIteration:
        current = None
    if target is None or current is None or not movable or current == target:
        yield
        return
    model.to(target)
    try:
        yield
    finally:
        model.to(current)


plugin = S3ftPlugin()
