"""``python -m ftplugins.train {sft,dpo,grpo,diffusion} --config FILE --plugins a,b [TRL args] [plugin args]``.

Runs TRL's own training script for the sub-command (``trl.scripts.sft`` ...) with the selected
plugins switched on, so a YAML file that ``trl sft --config`` accepts works unchanged; the only
additions are ``plugins:`` and the plugins' ``<name>_*`` keys. ``diffusion`` runs
:mod:`ftplugins.diffusion.script` (text-to-image fine-tuning of a diffusers pipeline) the same way.
Works under ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Sequence

from . import registry
from .cli_errors import exit_on_user_error
from .combinations import check_combination
from .model_path import check_model_path
from .context import Run
from .output import ignore_trl_gradient_checkpointing_default, quiet_replicas
from .patching import import_patched, plugins_active
from .process_end import ends_distributed_runs, leave_process_group
from .selection import given_keys, parse, selected_names

#: Sub-command -> (TRL script module, trainer class it builds).
COMMANDS = {
    "sft": ("trl.scripts.sft", "SFTTrainer"),
    "dpo": ("trl.scripts.dpo", "DPOTrainer"),
    "grpo": ("trl.scripts.grpo", "GRPOTrainer"),
    "diffusion": ("ftplugins.diffusion.script", "DiffusionTrainer"),
}

USAGE = (
    "usage: python -m ftplugins.train {sft,dpo,grpo,diffusion} [--config FILE] [--plugins a,b] [TRL args] "
    "[plugin args]\n"
    "TRL args are those of `trl <command> --help` (diffusion: `python -m ftplugins.train diffusion --help`); "
    "plugin args are listed by `ftplugins info NAME`."
)


def train(argv: Sequence[str], leave_group: bool = True) -> None:
    """Parse ``argv`` and run TRL's script for its sub-command with the plugins active.

    ``leave_group=False`` keeps a distributed process group for a next run in the same processes (the stages of
    ``ftplugins pipeline``); the caller then calls ``process_end.leave_process_group`` once at the end."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from .errors import FtpluginsError, did_you_mean

        raise FtpluginsError(f"unknown command {command!r};{did_you_mean(command, COMMANDS)} "
                             f"use one of: {', '.join(COMMANDS)}")
    module_name, trainer_name = COMMANDS[command]
    plugins = registry.select(selected_names(rest))
    check_combination(plugins)  # before TRL parses, loads data or a model
    # This import only reads the script's argument classes; the script that runs is imported again below,
    # with the plugins active (patch first, then import).
    script = importlib.import_module(module_name)
    dataclass_types = list(script.make_parser().dataclass_types)
    program = f"python -m ftplugins.train {command}"
    if any(a in ("-h", "--help") for a in rest):
        from trl import TrlParser

        TrlParser([*dataclass_types, *(p.options for p in plugins if p.options)], prog=program).parse_args(["--help"])
    given = given_keys(rest)
    with warnings.catch_warnings():
        if "gradient_checkpointing" not in given:  # the user's own choice keeps its warning
            ignore_trl_gradient_checkpointing_default()
        trl_args, options = parse(dataclass_types, plugins, rest, command=program)
    for args in trl_args:
        if hasattr(args, "log_level_replica") and "log_level_replica" not in given:
            args.log_level_replica = "error"  # processes other than rank 0 would repeat every warning
    model_args = next(a for a in trl_args if hasattr(a, "model_name_or_path"))
    if model_args.model_name_or_path is None:
        from .errors import OptionError

        raise OptionError("--model_name_or_path is required (a local model folder or a Hub model id).")
    # A script may say what its model is (a diffusers pipeline: model_index.json); TRL's load transformers models.
    check_model = getattr(script, "check_model", check_model_path)
    check_model(model_args.model_name_or_path, getattr(model_args, "model_revision", None))
    run = Run(plugins=plugins, options=options)
    from .composition import process_group_kept

    with plugins_active(run, [trainer_name]), (contextlib.nullcontext() if leave_group else process_group_kept()):
        import_patched(module_name).main(*trl_args)
    if leave_group:
        leave_process_group()


@ends_distributed_runs
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quiet_replicas()
    train(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
