"""``python -m ftplugins.train {sft,dpo,grpo} --config FILE --plugins a,b [TRL args] [plugin args]``.

Runs TRL's own training script for the sub-command (``trl.scripts.sft`` ...) with the selected
plugins switched on, so a YAML file that ``trl sft --config`` accepts works unchanged; the only
additions are ``plugins:`` and the plugins' ``<name>_*`` keys. Works under ``accelerate launch``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from . import registry
from .cli_errors import exit_on_user_error
from .model_path import check_model_path
from .context import Run
from .patching import plugins_active
from .selection import parse, selected_names

#: Sub-command -> (TRL script module, trainer class it builds).
COMMANDS = {
    "sft": ("trl.scripts.sft", "SFTTrainer"),
    "dpo": ("trl.scripts.dpo", "DPOTrainer"),
    "grpo": ("trl.scripts.grpo", "GRPOTrainer"),
}

USAGE = (
    "usage: python -m ftplugins.train {sft,dpo,grpo} [--config FILE] [--plugins a,b] [TRL args] [plugin args]\n"
    "TRL args are those of `trl <command> --help`; plugin args are listed by `ftplugins info NAME`."
)


def train(argv: Sequence[str]) -> None:
    """Parse ``argv`` and run TRL's script for its sub-command with the plugins active."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from .errors import FtpluginsError, did_you_mean

        raise FtpluginsError(f"unknown command {command!r};{did_you_mean(command, COMMANDS)} use one of: {', '.join(COMMANDS)}")
    module_name, trainer_name = COMMANDS[command]
    plugins = registry.select(selected_names(rest))
    script = importlib.import_module(module_name)
    dataclass_types = list(script.make_parser().dataclass_types)
    if any(a in ("-h", "--help") for a in rest):
        from trl import TrlParser

        TrlParser([*dataclass_types, *(p.options for p in plugins if p.options)]).parse_args(["--help"])
    trl_args, options = parse(dataclass_types, plugins, rest)
    model_args = next(a for a in trl_args if hasattr(a, "model_name_or_path"))
    if model_args.model_name_or_path is None:
        from .errors import OptionError

        raise OptionError("--model_name_or_path is required (a local model folder or a Hub model id).")
    check_model_path(model_args.model_name_or_path, getattr(model_args, "model_revision", None))
    run = Run(plugins=plugins, options=options)
    with plugins_active(run, [trainer_name]):
        script.main(*trl_args)
    leave_process_group()


def leave_process_group() -> None:
    """Destroy the distributed process group a DDP run created, before the interpreter exits: gloo's threads
    torn down at exit can abort the process after the work is done (torch also warns when it is left)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    train(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
