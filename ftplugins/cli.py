"""The ``ftplugins`` command: list and inspect plugins, train, wrap scripts, make offline fixtures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from . import registry
from .cli_errors import exit_on_user_error
from .plugin import describe


def provider(name: str) -> str:
    """The distribution that registers plugin ``name`` (``ftplugins`` for the built-in methods)."""
    ep = registry.available_entry_points()[name]
    dist = getattr(ep, "dist", None)
    if dist is not None and dist.metadata is not None and dist.metadata["Name"]:
        return dist.metadata["Name"]
    return "ftplugins" if ep.value.startswith("ftplugins.") else ep.value.split(".", 1)[0].split(":", 1)[0]


def cmd_list(args: argparse.Namespace) -> None:
    rows = []
    for name in registry.installed_names():
        row = registry.describe_installed(name)
        row["provider"] = provider(name)
        row["builtin"] = row["provider"] == "ftplugins"
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max([len(r["name"]) for r in rows] + [4])
    for row in rows:
        flag = "" if row["available"] else f"  [missing: {'; '.join(row['missing'])}]"
        origin = "" if row["builtin"] else f"  [third-party: {row['provider']}]"
        print(f"{row['name']:<{width}}  {row['summary']}{origin}{flag}")
        print(f"{'':<{width}}  paper: {row['paper']}")
        print(f"{'':<{width}}  contributes: {', '.join(row['contributes'])}")


def option_rows(plugin) -> list[dict]:
    rows = []
    for f in plugin.option_fields() if hasattr(plugin, "option_fields") else []:
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append({"name": f.name, "type": str(kind), "default": default, "help": f.metadata.get("help", "")})
    return rows


def cmd_info(args: argparse.Namespace) -> None:
    from .patching import patched_names

    installed = registry.installed_names()
    if args.name not in installed and args.name not in registry.disabled():
        from .errors import UnknownPluginError, did_you_mean

        raise UnknownPluginError(
            f"ftplugins info {args.name}: no such plugin;{did_you_mean(args.name, installed)} "
            f"Installed: {', '.join(installed) or '(none)'}. `ftplugins list` shows them."
        )
    plugin = registry.load(args.name)
    info = describe(plugin)
    info["options"] = option_rows(plugin)
    info["patches"] = patched_names(plugin)
    info["requires"] = dict(getattr(plugin, "requires", {}))
    info["claims"] = dict(getattr(plugin, "claims", None) or {})
    info["excludes"] = dict(getattr(plugin, "excludes", None) or {})
    info["distributed_refusals"] = dict(getattr(plugin, "distributed_refusals", None) or {})
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    print(f"{info['name']}: {info['summary']}")
    print(f"paper:        {info['paper']}")
    print(f"contributes:  {', '.join(info['contributes'])} (hooks)")
    print(f"trainers:     {', '.join(info['trainers']) if info['trainers'] else 'any'}")
    print(f"distributed:  {', '.join(info['distributed'])}")
    for mode, why in info["distributed_refusals"].items():
        print(f"  refuses {mode}: {why}")
    claims = getattr(plugin, "claims", None) or {}
    excludes = getattr(plugin, "excludes", None) or {}
    if claims or excludes:
        roles = [f"{role} ({what})" for role, what in claims.items()]
        roles += [f"not beside {role}: {why}" for role, why in excludes.items()]
        print(f"claims:       {'; '.join(roles)} (one plugin per role)")
    print(f"available:    {'yes' if info['available'] else 'no, run: ' + '; '.join(info['missing'])}")
    print(f"patches (ftplugins.run): {', '.join(info['patches'])}")
    print("options:")
    if not info["options"]:
        print("  (none)")
    for row in info["options"]:
        print(f"  --{row['name']} ({row['type']}, default {row['default']!r})")
        if row["help"]:
            print(f"      {row['help']}")


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for writing one small file is noise
    if args.kind == "diffusion":
        from .diffusion.tiny import save_tiny_pipeline

        save_tiny_pipeline(args.path, seed=args.seed)
        print(f"saved a tiny random Stable Diffusion-shaped pipeline (UNet, CLIP text encoder + tokenizer, VAE, "
              f"a 4-step Euler scheduler) to {args.path}")
        return
    if args.random:
        from .testing import save_tiny_llama

        save_tiny_llama(args.path, seed=args.seed)
        print(f"saved a tiny random Llama and its tokenizer to {args.path}")
        return
    import shutil

    from .tiny_base import tiny_base

    shutil.copytree(tiny_base(), args.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tiny-base.json"))
    print(f"saved the tiny pre-trained Llama (the quick start's base) and its tokenizer to {args.path}")


def cmd_tiny_data(args: argparse.Namespace) -> None:
    import datasets

    datasets.disable_progress_bars()  # one bar per small file written is noise; the paths are printed
    if args.kind == "diffusion":
        from .diffusion.tiny import write_diffusion_datasets

        written = write_diffusion_datasets(args.path)
    else:
        from .testing import write_builtin_datasets

        written = write_builtin_datasets(args.path)
    for path in written:
        print(path)


def cmd_new(args: argparse.Namespace) -> None:
    from .scaffold import scaffold

    directory = scaffold(args.name, args.dir)
    directory = directory if os.path.isabs(directory) else os.path.join(".", directory)  # a path to pip, not a name
    print(f"wrote the plugin package {directory}; next: pip install -e {directory} && pytest {directory}")


def cmd_check(args: argparse.Namespace) -> None:
    from .recipe_check import check_recipe

    for path in args.configs:
        print(check_recipe(path, command=args.command_name, accelerate_config=args.accelerate_config).summary())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftplugins", description="Fine-tuning methods as plugins for TRL/PEFT.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="installed plugins")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", help="a plugin's options, hooks and support matrix")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("tiny-model", help="save the tiny pre-trained Llama + tokenizer the recipes use (built once, "
                       "cached); --random: a randomly initialised one (offline fixtures)")
    p.add_argument("path")
    p.add_argument("--random", action="store_true", help="random weights instead of the pre-trained tiny base")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (with --random or --kind diffusion)")
    p.add_argument("--kind", choices=("llama", "diffusion"), default="llama",
                   help="diffusion: a tiny random text-to-image pipeline (needs ftplugins[diffusion])")
    p.set_defaults(func=cmd_tiny_model)
    p = sub.add_parser("tiny-data", help="write the built-in datasets as JSON lines (recipes); --kind diffusion: "
                       "image folders of coloured shapes with captions (PATH/shapes) and of shapes on named "
                       "backgrounds (PATH/backgrounds, for bob)")
    p.add_argument("path")
    p.add_argument("--kind", choices=("text", "diffusion"), default="text")
    p.set_defaults(func=cmd_tiny_data)
    p = sub.add_parser("new", help="write a pip-installable plugin package (entry point, options, a hook, a test)")
    p.add_argument("name", help="the plugin's name (lowercase, underscores): what users type after --plugins")
    p.add_argument("dir", nargs="?", help="where to write it (default: ./ftplugins-NAME)")
    p.set_defaults(func=cmd_new)
    p = sub.add_parser("check", help="validate recipes offline, without loading a model: keys, plugins, options, "
                       "trainer, distributed mode, local dataset columns")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="recipe YAML file(s)")
    p.add_argument("--command", dest="command_name", default=None,
                   help="the `python -m ftplugins.train` command (sft, dpo, grpo, ...); default: inferred from the "
                        "plugins' trainers, else sft")
    p.add_argument("--accelerate-config", default=None,
                   help="an accelerate config file: its distributed mode must be supported by every plugin")
    p.set_defaults(func=cmd_check)
    from .sparse.cli import add_subparser as add_delta_subparser

    add_delta_subparser(sub)
    from .data.cli import add_subparser as add_select_subparser

    add_select_subparser(sub)
    from .tools.cli import add_subparsers as add_tool_subparsers

    add_tool_subparsers(sub)
    from .eval.cli import add_subparser as add_eval_subparser

    add_eval_subparser(sub)
    add_plugin_commands(sub)
    for name, help_text in (
        ("train", "python -m ftplugins.train ..."),
        ("run", "python -m ftplugins.run ..."),
        ("quickstart", "python -m ftplugins.quickstart ..."),
        ("pipeline", "run a multi-stage regimen: ftplugins pipeline PIPELINE.yaml (TRL recipes in sequence)"),
    ):
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_plugin_commands(subparsers) -> None:
    """Sub-commands contributed by installed plugins (``Plugin.add_commands``)."""
    for name in registry.installed_names():
        try:
            plugin = registry.load(name)
        except Exception:  # noqa: BLE001 - a broken plugin shows up in `ftplugins list`, not here
            continue
        add = getattr(plugin, "add_commands", None)
        if add is not None:
            add(subparsers)


PASSTHROUGH = {"train": "ftplugins.train", "run": "ftplugins.run", "quickstart": "ftplugins.quickstart",
               "pipeline": "ftplugins.pipeline"}


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
