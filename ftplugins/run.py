"""``python -m ftplugins.run --plugins a,b [plugin args] -- script.py ARGS``.

Runs an unmodified training script with plugins switched on for every trainer class it builds
(``transformers.Trainer`` and TRL's trainers, see :data:`ftplugins.patching.TRAINERS`). The
patching is scoped to the script's run and undone afterwards. Works under ``accelerate launch``.
A ``--config FILE`` YAML may hold ``plugins:`` and plugin options; its other keys are left to the
script, so one YAML can feed both (e.g. TRL's own ``sft.py --config`` the same file).
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence

from . import registry
from .cli_errors import exit_on_user_error
from .combinations import check_combination
from .context import Run
from .errors import FtpluginsError
from .output import quiet_replicas
from .patching import plugins_active, require_trainer_built
from .process_end import ends_distributed_runs
from .selection import parse, selected_names

USAGE = "usage: python -m ftplugins.run --plugins a,b [--config FILE] [plugin args] -- script.py [script args]"

HELP = f"""{USAGE}

Run an unmodified training script with plugins switched on for every trainer class it builds
(transformers.Trainer and TRL's trainers); the patching is undone when the script ends.

arguments (before `--`):
  --plugins a,b        plugins to switch on, in call order (`ftplugins list` shows the installed ones)
  --config FILE        a YAML file whose `plugins:` and plugin keys (`<plugin>_*`) are read here; its other
                       keys are left to the script, so the same file can feed both
  --<plugin>_<option> VALUE
                       a plugin option (`ftplugins info NAME` lists them with types and defaults)
  -h, --help           show this help

after `--`:
  script.py [args]     the script and its own arguments, passed to it unchanged

example:
  accelerate launch -m ftplugins.run --plugins masked_thought --masked_thought_ratio 0.2 -- sft.py --config sft.yaml
"""


def run_script(argv: Sequence[str]) -> None:
    argv = list(argv)
    if "--" not in argv:
        raise FtpluginsError(f"missing `--` before the script. {USAGE}")
    split = argv.index("--")
    ours, theirs = argv[:split], argv[split + 1 :]
    if not theirs:
        raise FtpluginsError(f"no script after `--`. {USAGE}")
    script = theirs[0]
    if not os.path.isfile(script):
        raise FtpluginsError(f"script {script!r} does not exist.")
    plugins = registry.select(selected_names(ours))
    check_combination(plugins)  # before TRL parses, loads data or a model
    _, options = parse([], plugins, ours, config_shared=True, command="python -m ftplugins.run")
    run = Run(plugins=plugins, options=options)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *theirs[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        with plugins_active(run):
            runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    require_trainer_built(run, runs_before=0)


@ends_distributed_runs
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quiet_replicas()
    argv = list(sys.argv[1:] if argv is None else argv)
    ours = argv[: argv.index("--")] if "--" in argv else argv
    if not argv or any(a in ("-h", "--help") for a in ours):
        print(HELP)
        return
    run_script(argv)


if __name__ == "__main__":
    main()
