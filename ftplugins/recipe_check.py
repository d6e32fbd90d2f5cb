"""``ftplugins check CONFIG``: everything about a recipe that can be wrong, found without loading a model.

A paper-scale recipe is run on machines the author may not have (8 GPUs, a 7B model from the Hub); a typo in a
key, a plugin that refuses FSDP or a dataset column that does not exist should fail here, in a second, not after
the model has downloaded and sharded. The check reads the recipe the way ``python -m ftplugins.train`` does (the
same parser, so TRL's keys and every plugin's ``<name>_*`` options are parsed and validated), resolves the
plugins and their combination, checks each plugin against the trainer and the distributed mode of an accelerate
config, runs the plugins' ``validate`` hooks, and, when the dataset is a local file or folder, checks the columns
the recipe names. Nothing is downloaded and no weights are read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import FtpluginsError, OptionError

#: accelerate's ``distributed_type`` -> the distributed mode plugins declare (``Plugin.distributed``).
ACCELERATE_MODES = {"NO": "single", "MULTI_CPU": "ddp", "MULTI_GPU": "ddp", "MULTI_XPU": "ddp",
                    "MULTI_NPU": "ddp", "MULTI_MLU": "ddp", "MULTI_HPU": "ddp", "FSDP": "fsdp",
                    "DEEPSPEED": "deepspeed"}


@dataclass
class RecipeCheck:
    """What :func:`check_recipe` established about one recipe."""

    path: str
    command: str
    plugins: list[str]
    mode: str
    checked_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        plugins = ", ".join(self.plugins) or "no plugins"
        extra = f"; columns {', '.join(self.checked_columns)} found" if self.checked_columns else ""
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{self.path}: ok ({self.command}, {plugins}, {self.mode}{extra}{notes})"


def distributed_mode_of(accelerate_config: str | None) -> str:
    """The distributed mode an accelerate config file sets up (``single`` without one)."""
    if accelerate_config is None:
        return "single"
    from .config_file import load_config

    config = load_config(accelerate_config)
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind not in ACCELERATE_MODES:
        raise OptionError(f"--accelerate-config {accelerate_config}: distributed_type {kind!r} is not one accelerate "
                          f"knows ({', '.join(ACCELERATE_MODES)}).")
    mode = ACCELERATE_MODES[kind]
    if mode == "ddp" and int(config.get("num_processes", 1) or 1) * int(config.get("num_machines", 1) or 1) <= 1:
        return "single"
    return mode


def infer_command(path: str, plugins: Sequence[Any], commands: dict[str, tuple[str, str]]) -> str:
    """The ``ftplugins.train`` sub-command of a recipe: the one whose trainer every plugin applies to; when several
    fit (plugins for any trainer, or none), the recipe's file name ``<name>_<command>.yaml`` (the convention of
    ``recipes/``), else SFT."""
    fits = [c for c, (_, trainer) in commands.items()
            if all(not getattr(p, "trainers", None) or trainer in p.trainers for p in plugins)]
    if not fits:
        raise FtpluginsError(f"{path}: no `python -m ftplugins.train` command fits every plugin "
                             f"({', '.join(p.name for p in plugins)}); they apply to different trainers.")
    if len(fits) == 1:
        return fits[0]
    stem = os.path.splitext(os.path.basename(path))[0]
    named = [c for c in fits if stem.endswith("_" + c)]
    if named:
        return named[0]
    return "sft" if "sft" in fits else fits[0]


def check_recipe(path: str, command: str | None = None, accelerate_config: str | None = None) -> RecipeCheck:
    """Check the recipe at ``path``; raise an :class:`FtpluginsError` naming the first problem."""
    import importlib

    from . import registry
    from .combinations import check_combination
    from .composition import check_plugins_supported, compose_run
    from .config_file import config_plugin_names
    from .context import Run
    from .selection import parse
    from .train import COMMANDS

    plugins = registry.select(config_plugin_names(path))
    check_combination(plugins)
    if command is None:
        command = infer_command(path, plugins, COMMANDS)
    if command not in COMMANDS:
        raise OptionError(f"--command {command!r}: expected one of {', '.join(COMMANDS)}.")
    module_name, trainer_name = COMMANDS[command]
    for plugin in plugins:  # before the keys: a GRPO recipe read as SFT has GRPO keys SFT does not know
        if getattr(plugin, "trainers", None) and trainer_name not in plugin.trainers:
            raise FtpluginsError(f"{path}: plugin {plugin.name} applies to {', '.join(plugin.trainers)}, not to "
                                 f"{trainer_name} (`{command}`); check it with the command of its trainer.")
    module = importlib.import_module(module_name)
    dataclass_types = list(module.make_parser().dataclass_types)
    with recipe_hardware():
        trl_args, options = parse(dataclass_types, plugins, ["--config", path], command=f"ftplugins check ({command})")
    args = next((a for a in trl_args if hasattr(a, "output_dir")), None)
    script_args = next((a for a in trl_args if hasattr(a, "dataset_name")), None)
    model_args = next((a for a in trl_args if hasattr(a, "model_name_or_path")), None)
    if model_args is not None and not model_args.model_name_or_path:
        raise OptionError(f"{path}: model_name_or_path is missing (a local model folder or a Hub model id).")
    mode = distributed_mode_of(accelerate_config)
    trainer_cls = compose_run(trainer_class(trainer_name), Run(plugins=plugins, options=options))
    run = Run(plugins=plugins, options=options, trainer_cls=trainer_cls, args=args)
    check_plugins_supported(run, mode)
    run.call("validate")
    result = RecipeCheck(path=path, command=command, plugins=[p.name for p in plugins], mode=mode)
    dataset = getattr(script_args, "dataset_name", None)
    if dataset and os.path.exists(dataset):
        result.checked_columns = check_dataset_columns(path, dataset, script_args, options, run)
    elif dataset:
        if not looks_like_hub_id(dataset):
            raise FtpluginsError(f"{path}: dataset_name {dataset} is neither a local file or folder (none there, "
                                 f"relative to {os.getcwd()}) nor a Hub dataset id (owner/name); fix the path, or run "
                                 f"the check from the folder the recipe is launched from.")
        result.notes.append(f"columns not checked: dataset {dataset} is remote (a Hub id, not downloaded)")
    return result


def looks_like_hub_id(name: str) -> bool:
    """``name`` or ``owner/name`` without a file suffix: what ``datasets.load_dataset`` would fetch from the Hub.
    A missing local path (``runs/data/arithmetc``, ``data/x.jsonl``) is not one, so it is refused, not skipped."""
    parts = name.split("/")
    return (0 < len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))
            and os.path.splitext(parts[-1])[1].lower() not in DATA_SUFFIXES)


#: file suffixes of data files: a name ending so is a local path, never a Hub id.
DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".gz", ".zst"}


@contextlib.contextmanager
def recipe_hardware() -> Iterator[None]:
    """While the recipe is parsed, ``TrainingArguments`` sees bf16 and tf32 as available: it probes the machine it
    runs on, and the check runs on a laptop or a CPU CI runner while the recipe is for GPUs (``bf16: true`` would
    fail there with "Your setup doesn't support bf16/gpu"). A recipe asks for them; the launch machine provides."""
    from unittest import mock

    from transformers import training_args

    with mock.patch.object(training_args, "is_torch_bf16_gpu_available", lambda *a, **k: True), \
            mock.patch.object(training_args, "is_torch_tf32_available", lambda *a, **k: True):
        yield


def trainer_class(name: str) -> type:
    """The trainer class a ``ftplugins.train`` command builds (TRL's, or ours for diffusion)."""
    import trl

    found = getattr(trl, name, None)
    if found is None:
        from . import diffusion

        found = getattr(diffusion, name)
    return found


def check_dataset_columns(path: str, dataset: str, script_args: Any, options: dict[str, Any], run: Any) -> list[str]:
    """The columns the plugins read (``Plugin.input_columns``), and the trainer's own format when no plugin
    rewrites the rows, must be in the local dataset's train split. Returns the plugins' columns checked."""
    from .dataset_columns import check_columns
    from .errors import DatasetColumnsError

    split = getattr(script_args, "dataset_train_split", "train")
    columns = local_columns(dataset, getattr(script_args, "dataset_config", None), split)
    checked: list[str] = []
    for plugin in run.plugins:
        wanted = plugin.input_columns(options.get(plugin.name), split) if hasattr(plugin, "input_columns") else []
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DatasetColumnsError(
                f"{path}: plugin {plugin.name} reads column(s) {', '.join(map(repr, missing))}, which {dataset} "
                f"({split}) does not have (its columns: {', '.join(sorted(columns))}); rename the columns or set "
                f"the plugin's column options (`ftplugins info {plugin.name}`).")
        checked += [c for c in wanted if c not in checked]
    if not any(run.manager.hook.transform_dataset.get_hookimpls()):
        check_columns(run.trainer_cls, _Columns(columns), "train")
    return checked


class _Columns:
    def __init__(self, names: Sequence[str]) -> None:
        self.column_names = list(names)


def local_columns(dataset: str, config: str | None, split: str) -> list[str]:
    """Column names of a local dataset (a ``save_to_disk`` folder, a data file or a folder of them), read from
    its first row only."""
    import datasets

    if os.path.isdir(dataset) and os.path.exists(os.path.join(dataset, "dataset_info.json")):
        return list(datasets.load_from_disk(dataset).column_names)
    if os.path.isdir(dataset) and os.path.exists(os.path.join(dataset, "dataset_dict.json")):
        return list(datasets.load_from_disk(dataset)[split].column_names)
    stream = datasets.load_dataset(dataset, name=config, split=split, streaming=True)
    first = next(iter(stream), None)
    if first is None:
        raise FtpluginsError(f"dataset {dataset}: the {split} split is empty.")
    return list(first)
