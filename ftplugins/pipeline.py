"""``ftplugins pipeline PIPELINE.yaml``: a multi-stage training regimen, each stage one TRL recipe.

Regimens such as ARC-Hunyuan-Video's (instruction fine-tuning -> cold start -> RL -> instruction fine-tuning) are run
by hand, stage by stage. A pipeline file lists the stages; each is what ``python -m ftplugins.train COMMAND --config``
runs (a TRL recipe with its own ``plugins:`` and options), started from the previous stage's output::

    output_dir: runs/regimen            # stage n writes OUTPUT/<n>-<name>
    model_name_or_path: runs/tiny-llama # the first stage's model
    chain: merge                        # how a stage that trained an adapter hands it on: merge | adapters
    stages:
      - name: sft
        command: sft                    # sft | dpo | grpo
        config: recipes/lift_sft.yaml   # optional: a recipe file; `args` override its keys
        args: {max_steps: 20}
      - {name: dpo, command: dpo, args: {dataset_name: runs/data/preference, max_steps: 10}}

A stage is finished when its run manifest (``ftplugins_run.json``, :mod:`ftplugins.run_output`) is intact and lists
the saved model: a rerun after a crash skips finished stages and resumes the first unfinished one from its last whole
checkpoint (:mod:`ftplugins.checkpoints`), if it has one. With ``chain: adapters`` a stage's ``model_out`` is the base
and the adapters so far, in order (:func:`ftplugins.adapter_chain.load_chain` loads it).
``OUTPUT/ftplugins_pipeline.json`` records every stage
(written atomically after each). Under ``accelerate launch -m ftplugins.pipeline PIPELINE.yaml`` every process runs the
stages together, as one stage would; the main process alone merges adapters and writes the pipeline manifest.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .cli_errors import exit_on_user_error
from .errors import FtpluginsError
from .process_end import ends_distributed_runs

MANIFEST = "ftplugins_pipeline.json"
#: How a stage that trained an adapter hands it to the next stage.
CHAINS = {"merge": "the adapter is merged into its base model (OUTPUT/<n>-<name>-merged); the next stage starts from "
                   "that full model",
          "adapters": "the next stage starts from the same base + the adapters so far, frozen and unmerged, and trains "
                      "and saves only its own new adapter (:mod:`ftplugins.adapter_chain`); the result is the base + "
                      "the adapters in order. Every stage after the first is an sft stage that trains an adapter of "
                      "the same type"}
COMMANDS = ("sft", "dpo", "grpo")
KEYS = {"output_dir", "model_name_or_path", "chain", "stages"}
STAGE_KEYS = {"name", "command", "config", "args"}
#: Files whose presence in a run manifest means the stage saved its model (full weights or an adapter).
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
#: Keys the pipeline sets for every stage.
OWNED = ("output_dir", "resume_from_checkpoint")


def load(path: str) -> dict[str, Any]:
    """The pipeline file, checked: every problem names the key and the fix."""
    import yaml

    if not os.path.isfile(path):
        raise FtpluginsError(f"pipeline file {path!r} does not exist; pass the YAML file that lists the stages.")
    with open(path) as handle:
        spec = yaml.safe_load(handle) or {}
    if not isinstance(spec, dict):
        raise FtpluginsError(f"{path}: expected a mapping with keys {', '.join(sorted(KEYS))}.")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise FtpluginsError(f"{path}: unknown key(s) {', '.join(unknown)}; a pipeline has {', '.join(sorted(KEYS))}.")
    if not spec.get("output_dir"):
        raise FtpluginsError(f"{path}: output_dir is required (stage n writes OUTPUT/<n>-<name>).")
    chain = spec.setdefault("chain", "merge")
    if chain not in CHAINS:
        raise FtpluginsError(f"{path}: chain {chain!r}: expected one of {', '.join(CHAINS)}.")
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise FtpluginsError(f"{path}: stages must be a non-empty list of {{name, command, config, args}}.")
    names = []
    for number, stage in enumerate(stages, 1):
        where = f"{path}: stage {number}"
        if not isinstance(stage, dict):
            raise FtpluginsError(f"{where}: expected a mapping with keys {', '.join(sorted(STAGE_KEYS))}.")
        bad = sorted(set(stage) - STAGE_KEYS)
        if bad:
            raise FtpluginsError(f"{where}: unknown key(s) {', '.join(bad)}; a stage has "
                                 f"{', '.join(sorted(STAGE_KEYS))} (TRL and plugin keys go under args).")
        if stage.get("command") not in COMMANDS:
            raise FtpluginsError(f"{where}: command {stage.get('command')!r}: expected one of {', '.join(COMMANDS)}.")
        name = str(stage.get("name") or stage["command"])
        if not name.replace("_", "").replace("-", "").isalnum() or name in names:
            raise FtpluginsError(f"{where}: name {name!r}: expected a unique name of letters, digits, - and _.")
        if chain == "adapters" and number > 1 and stage["command"] != "sft":
            raise FtpluginsError(f"{where}: command {stage['command']} under chain: adapters: its reference model "
                                 "would be the base without the earlier adapters; use chain: merge for dpo / grpo "
                                 "stages after the first.")
        names.append(name)
        stage["name"] = name
        config = stage.get("config")
        if config is not None and not os.path.isfile(config):
            raise FtpluginsError(f"{where}: config {config!r} does not exist (a TRL recipe YAML, or leave it out).")
        args = stage.setdefault("args", {}) or {}
        if not isinstance(args, dict):
            raise FtpluginsError(f"{where}: args must be a mapping of TRL / plugin keys.")
        owned = sorted(k for k in args if k in OWNED or (k == "model_name_or_path" and number > 1))
        if owned:
            raise FtpluginsError(f"{where}: sets {', '.join(owned)}, which the pipeline decides (a stage writes "
                                 "OUTPUT/<n>-<name> and starts from the previous stage's output); remove it.")
        stage["args"] = args
    return spec


def stage_dir(spec: dict[str, Any], number: int, stage: dict[str, Any]) -> str:
    return os.path.join(spec["output_dir"], f"{number}-{stage['name']}")


def finished(folder: str) -> bool:
    """The run in ``folder`` finished: its manifest is intact and lists the model it saved."""
    from .run_output import MANIFEST as RUN_MANIFEST, check_manifest

    if not os.path.isfile(os.path.join(folder, RUN_MANIFEST)) or check_manifest(folder):
        return False
    with open(os.path.join(folder, RUN_MANIFEST)) as handle:
        artifacts = json.load(handle).get("artifacts", {})
    return any(name in artifacts for name in MODEL_FILES)


def stage_config(spec: dict[str, Any], stage: dict[str, Any], model: str | None, folder: str) -> dict[str, Any]:
    """The recipe this stage runs: its config file's keys, then its args, then what the pipeline decides."""
    import yaml

    config: dict[str, Any] = {}
    if stage.get("config"):
        with open(stage["config"]) as handle:
            config = yaml.safe_load(handle) or {}
    config.update(stage["args"])
    if model is not None:
        config["model_name_or_path"] = model
    if not config.get("model_name_or_path"):
        raise FtpluginsError(f"stage {stage['name']}: no model_name_or_path (set it at the pipeline's top level, or "
                             "in the first stage's args or config).")
    config["output_dir"] = folder
    from .checkpoints import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(folder)
    if checkpoint is not None:
        config["resume_from_checkpoint"] = checkpoint
    return config


def merged_model(base: str, adapter_dir: str, destination: str) -> str:
    """Merge the adapter in ``adapter_dir`` into ``base``; write the full model + tokenizer to ``destination``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .atomic import staged_dir
    from .peft_types import load_adapter

    if os.path.isfile(os.path.join(destination, "config.json")):  # published last: the weights are whole
        return destination
    model = load_adapter(AutoModelForCausalLM.from_pretrained(base), adapter_dir).merge_and_unload()
    with staged_dir(destination, replace=True) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(tmp)
    return destination


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_manifest(spec: dict[str, Any], path: str, records: list[dict[str, Any]]) -> None:
    from .atomic import staged_dir

    with staged_dir(spec["output_dir"]) as tmp:
        with open(os.path.join(tmp, MANIFEST), "w") as handle:
            json.dump({"pipeline": os.path.abspath(path), "chain": spec["chain"], "stages": records}, handle,
                      indent=2)


def run_pipeline(path: str) -> list[dict[str, Any]]:
    """Run (or resume) the pipeline in ``path``; returns the per-stage records of the pipeline manifest."""
    import yaml

    from .adapter_chain import chained
    from .atomic import staged_dir
    from .process_end import leave_process_group
    from .train import train

    spec = load(path)
    os.makedirs(spec["output_dir"], exist_ok=True)
    model = spec.get("model_name_or_path")
    adapters: list[str] = []  # chain: adapters: the adapters trained so far on `model`, oldest first
    records = []
    try:
        for number, stage in enumerate(spec["stages"], 1):
            folder = stage_dir(spec, number, stage)
            config = stage_config(spec, stage, model, folder)
            record = {"name": stage["name"], "command": stage["command"], "output_dir": os.path.abspath(folder),
                      "model_in": config["model_name_or_path"]}
            if adapters:
                record["adapters_in"] = list(adapters)
            done = finished(folder)
            if not done:
                record["resumed_from"] = config.get("resume_from_checkpoint")
                recipe = f"{number}-{stage['name']}.yaml"
                with staged_dir(spec["output_dir"]) as tmp:  # every process writes the same file
                    with open(os.path.join(tmp, recipe), "w") as handle:
                        yaml.safe_dump(config, handle)
                with chained(adapters):
                    train([stage["command"], "--config", os.path.join(spec["output_dir"], recipe)],
                          leave_group=False)
                if not finished(folder):
                    raise FtpluginsError(f"stage {stage['name']} ended without a complete run manifest in {folder}; "
                                         "see its log above.")
            record["state"] = "finished earlier" if done else "trained"
            with open(os.path.join(folder, "ftplugins_run.json")) as handle:
                record["global_step"] = json.load(handle).get("global_step")
            trained_adapter = os.path.isfile(os.path.join(folder, "adapter_config.json"))
            if spec["chain"] == "adapters" and trained_adapter:
                adapters.append(os.path.abspath(folder))
                record["model_out"] = {"base": record["model_in"], "adapters": list(adapters)}
                records.append(record)
                if is_main_process():
                    write_manifest(spec, path, records)
                wait_for_everyone()
                continue
            model = folder
            adapters = []
            if trained_adapter:
                merged = folder + "-merged"
                if is_main_process():
                    merged_model(record["model_in"], folder, merged)
                wait_for_everyone()
                record["merged"] = os.path.abspath(merged)
                model = merged
            record["model_out"] = os.path.abspath(model)
            records.append(record)
            if is_main_process():
                write_manifest(spec, path, records)
            wait_for_everyone()
    finally:
        leave_process_group()
    return records


USAGE = "usage: ftplugins pipeline PIPELINE.yaml   (or: accelerate launch -m ftplugins.pipeline PIPELINE.yaml)"


@ends_distributed_runs
@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print(USAGE + "\n\n" + __doc__)
        return
    if len(argv) != 1:
        raise SystemExit(USAGE)
    for record in run_pipeline(argv[0]):
        if is_main_process():
            out = record["model_out"]
            if isinstance(out, dict):
                out = " + ".join([out["base"], *out["adapters"]])
            print(f"stage {record['name']}: {record['state']} -> {out}")


if __name__ == "__main__":
    main()
