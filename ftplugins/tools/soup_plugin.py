"""The ``soup`` plugin: a checkpoint soup of the run's last k checkpoints, written beside the model.

After training, the last ``soup_last_k`` whole checkpoints of ``output_dir`` (``checkpoint-N``, largest N)
are averaged (:mod:`ftplugins.tools.soup`; uniform, or greedy scored on ``soup_heldout`` /
``soup_evaluator``) into ``output_dir/soup_dir``. Works for full-model and adapter runs alike (the
checkpoints hold what the trainer saves; under a ``DiffusionTrainer`` the soup is the denoiser's folder, which its
class's ``from_pretrained`` loads). This module stays light: torch is imported inside the hook.
"""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from ftplugins.errors import FtpluginsError
from ftplugins.options import check_choice
from ftplugins.plugin import Plugin, hookimpl

_log = logging.getLogger(__name__)


@dataclass
class SoupOptions:
    soup_last_k: int = field(default=3, metadata={"help": "Soup the last k saved checkpoints of the run (k >= 2)."})
    soup_method: str = field(default="uniform", metadata={
        "help": "'uniform' (mean of the k checkpoints) or 'greedy' (best first on the held-out set, added while "
                "its score does not drop; needs soup_heldout or soup_evaluator)."})
    soup_strict: bool = field(default=False, metadata={
        "help": "Greedy: add a checkpoint only if the score strictly improves (default: does not drop)."})
    soup_heldout: Optional[str] = field(default=None, metadata={
        "help": "Greedy: held-out .jsonl file, scored by soup_heldout_metric."})
    soup_heldout_metric: str = field(default="loss", metadata={
        "help": "'loss' (minus the mean token loss of 'text' rows) or 'exact_match' (share of prompt/target rows "
                "whose target the model predicts exactly, teacher-forced)."})
    soup_evaluator: Optional[str] = field(default=None, metadata={
        "help": "Greedy: package.module:function scoring a model, func(model, tokenizer) -> float, higher is better."})
    soup_dir: str = field(default="soup", metadata={"help": "Folder, inside output_dir, that receives the soup."})

    def __post_init__(self):
        if self.soup_last_k < 2:
            raise ValueError(f"--soup_last_k {self.soup_last_k!r}: expected at least 2 checkpoints to average")
        check_choice("soup_method", self.soup_method, ("uniform", "greedy"))
        check_choice("soup_heldout_metric", self.soup_heldout_metric, ("loss", "exact_match"))
        if self.soup_method == "greedy" and not (self.soup_heldout or self.soup_evaluator):
            raise ValueError("--soup_method greedy needs a held-out score: set soup_heldout (a .jsonl file) or "
                                 "soup_evaluator (package.module:function)")
        if not self.soup_dir or os.path.isabs(self.soup_dir) or self.soup_dir.startswith("checkpoint-"):
            raise ValueError(f"--soup_dir {self.soup_dir!r}: expected a relative folder name inside output_dir "
                                 "that does not look like a checkpoint, e.g. 'soup'")


class SoupPlugin(Plugin):
    name = "soup"
    summary = "Checkpoint soup: average the run's last k checkpoints (uniform or greedy) into output_dir/soup."
    paper = "Wortsman et al., ICML 2022, arXiv:2203.05482"
    options = SoupOptions
    distributed = ("single", "ddp")
    distributed_refusals = {
        "fsdp": "averages checkpoint-N's whole-model file, which FSDP2 writes only with FULL_STATE_DICT (untested)",
        "deepspeed": "averages checkpoint-N's whole-model file, which ZeRO-3 writes only with its 16-bit gather "
                     "(untested)",
    }

    @hookimpl
    def validate(self, run):
        args, opts = run.args, run.options_for(self)
        if args is None:
            return
        if getattr(args, "save_strategy", "no") in ("no", None) or str(args.save_strategy).endswith("NO"):
            raise FtpluginsError("the soup plugin averages saved checkpoints, but save_strategy='no'; set "
                                 "save_strategy='steps' (and save_steps) or 'epoch'")
        if opts.soup_method == "greedy" and opts.soup_heldout and run.has_base("DiffusionTrainer"):
            raise FtpluginsError("soup_heldout scores a language model's held-out text, but this run trains a "
                                 "diffusers denoiser; score it with soup_evaluator (package.module:function called "
                                 "as func(denoiser, tokenizer)), or use soup_method uniform")
        limit = getattr(args, "save_total_limit", None)
        if limit is not None and limit < opts.soup_last_k:
            raise FtpluginsError(f"soup_last_k={opts.soup_last_k} but save_total_limit={limit} keeps fewer "
                                 f"checkpoints; raise save_total_limit to at least {opts.soup_last_k} or lower "
                                 "soup_last_k")

    @hookimpl
    def post_train(self, run, trainer):
        if not trainer.is_world_process_zero():
            return
        from . import soup

        opts = run.options_for(self)
        folder = trainer.args.output_dir
        chosen = last_checkpoints(folder, opts.soup_last_k)
        if len(chosen) < 2:
            _log.warning("soup: %s holds %d whole checkpoint(s); a soup needs 2, none written", folder, len(chosen))
            return
        output = os.path.join(folder, opts.soup_dir)
        if opts.soup_method == "uniform":
            soup.uniform(chosen, output, overwrite=True)
        else:
            from .heldout import make_evaluator

            evaluate = make_evaluator(trainer.processing_class, opts.soup_heldout, opts.soup_heldout_metric,
                                      opts.soup_evaluator)
            base = getattr(getattr(trainer.model, "config", None), "_name_or_path", None)
            soup.greedy(chosen, output, evaluate, base=base, strict=opts.soup_strict, overwrite=True,
                        load_model=own_class_loader(trainer))
        _log.info("soup: wrote the %s soup of %s to %s", opts.soup_method, chosen, output)


def own_class_loader(trainer):
    """Checkpoints of a whole model load with the trained model's own class (a causal LM, a classifier, a diffusers
    denoiser); adapter checkpoints (a PEFT-wrapped model) keep the default: their base plus the adapter."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "peft_config") or not hasattr(type(model), "from_pretrained"):
        return None
    return type(model).from_pretrained


def last_checkpoints(folder: str, k: int) -> list[str]:
    """The last ``k`` whole ``checkpoint-N`` folders of ``folder``, oldest first (incomplete ones skipped)."""
    import re

    from ftplugins.checkpoints import checkpoint_problem

    if not os.path.isdir(folder):
        return []
    steps = sorted((int(m.group(1)), name) for name in os.listdir(folder)
                   if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(folder, name)))
    paths = [os.path.join(folder, name) for _step, name in steps]
    return [path for path in paths if checkpoint_problem(path) is None][-k:]


plugin = SoupPlugin()
