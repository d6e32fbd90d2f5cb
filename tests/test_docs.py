"""Every shell command in README.md, CONTRIBUTING.md and examples/ runs, so the docs cannot drift.

The rule. A fenced block marked ``bash`` / ``sh`` / ``shell`` / ``console`` holds commands, one a line
(backslash continuations joined, ``#`` comments and ``$ `` prompts dropped). A documented file's
commands run in order, as one script, in a scratch copy of the repository where

* ``python``, ``python3``, ``pip``, ``pytest``, ``ftplugins`` and ``.venv/bin/...`` are a throwaway
  virtual environment that sees the test environment's packages (``conftest.overlay_venv``), and
  ``pip install`` of a local folder installs it there, offline (``conftest.OFFLINE_PIP``);
* ``runs/tiny-llama`` and ``runs/data`` hold what ``ftplugins tiny-model`` / ``ftplugins tiny-data``
  write, the offline model and data the recipes point at;
* the reader's own files that the docs name (:data:`READER_FILES`) exist;
* training commands are shortened (:data:`SHORTEN`).

A line that cannot run in a test matches a rule of :data:`NOT_RUN`, which says why; every rule must
match some documented line (a stale rule fails too). A new command in the docs is covered as soon as
it is written: it runs, or it names its reason here.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest
from conftest import OFFLINE_PIP, overlay_venv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "CONTRIBUTING.md",
        *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "examples", "**", "*.md"),
                                                              recursive=True))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}

#: (pattern, why): a command part (lines split at ``&&``) matching ``pattern`` is not run by the test.
NOT_RUN = [
    (r"^make\b", "builds .venv from PyPI first (make quickstart, make test); CI runs the suite, and the quick start "
                 "is the README's own command below"),
    (r"^python3? -m venv\b", "creates a virtual environment from PyPI: the test runs inside one"),
    (r"\bpip install\b(?!(\s+(-e|--editable))?(\s+\.{0,2}/\S+)+$)",
     "installs from PyPI (or the repository itself): only local folders install offline"),
    (r"^accelerate launch\b", "several processes: tests/test_distributed.py runs the two-process set-ups"),
    (r"-m benchmarks\.", "minutes of measuring: tests/test_benchmarks_smoke.py runs each harness at --smoke size"),
]

#: (pattern, arguments appended): short runs of the training commands (later arguments win).
SHORTEN = [
    (r"\bftplugins(\.|\s+)train\b", "--max_steps 1 --save_strategy no --disable_tqdm true --report_to none"),
    (r"\bftplugins(\.|\s+)quickstart\b", "--max-steps 2 --eval-prompts 2 --output-dir runs/quickstart-output"),
]

#: Files the docs name as the reader's own (a TRL config, a training script), as a reader would have them.
READER_FILES = {
    "my_sft.yaml": """\
# A plain TRL SFT config (what `trl sft --config` reads), no ftplugins keys.
model_name_or_path: runs/tiny-llama
dataset_name: runs/data/arithmetic
output_dir: runs/my_sft
per_device_train_batch_size: 4
max_length: 64
use_cpu: true
bf16: false
report_to: none
""",
    "train.py": """\
# A plain TRL training script that knows nothing of ftplugins; its own arguments are ignored.
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

args = SFTConfig(output_dir="runs/train_py", max_steps=1, per_device_train_batch_size=4, max_length=64,
                 use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained("runs/tiny-llama"), args=args,
                     train_dataset=load_dataset("runs/data/arithmetic", split="train"),
                     processing_class=AutoTokenizer.from_pretrained("runs/tiny-llama"))
trainer.train()
print("trained with", type(trainer).__name__)
""",
}


def strip_comment(line: str) -> str:
    """``line`` without a shell comment (a ``#`` at the start or after a blank, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(path: str) -> list[str]:
    """The commands of ``path``'s shell blocks, in order."""
    commands, block, pending = [], None, ""
    for raw in open(os.path.join(REPO, path), encoding="utf-8"):
        fence = re.match(r"\s*```\s*(\S*)", raw)
        if fence:
            block = fence.group(1).lower() if block is None else None
            continue
        if block not in SHELL_LANGUAGES:
            continue
        line = raw.rstrip("\n")
        line = line.strip()[2:] if line.strip().startswith("$ ") else line
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = " ".join(strip_comment(pending + line).split())
        pending = ""
        if command:
            commands.append(command)
    return commands


def parts(command: str) -> list[str]:
    return [part.strip() for part in command.split("&&")]


def why_not_run(command: str) -> str | None:
    for part in parts(command):
        for pattern, why in NOT_RUN:
            if re.search(pattern, part):
                return why
    return None


def shortened(command: str) -> str:
    out = []
    for part in parts(command):
        for pattern, extra in SHORTEN:
            if re.search(pattern, part):
                part = f"{part} {extra}"
        out.append(part)
    return " && ".join(out)


def test_every_documented_command_runs_or_says_why_not():
    commands = {doc: shell_commands(doc) for doc in DOCS}
    every = [c for found in commands.values() for c in found]
    assert "pip install ./examples/ftplugins-freeze-embeddings" in commands[
        "examples/ftplugins-freeze-embeddings/README.md"]
    assert any(why_not_run(c) is None for c in commands["README.md"])
    for pattern, why in NOT_RUN:
        assert any(re.search(pattern, part) for c in every for part in parts(c)), \
            f"NOT_RUN rule {pattern!r} ({why}) matches no documented command: remove it"
    for pattern, _ in SHORTEN:
        assert any(re.search(pattern, c) for c in every if why_not_run(c) is None), f"SHORTEN {pattern!r} is stale"
    # Local installs run; installs from PyPI do not.
    assert why_not_run("pip install -e ./ftplugins-my-method") is None
    assert why_not_run(".venv/bin/pip install -c constraints.txt -e \".[test]\"")
    assert strip_comment("make test   # the suite") == "make test   "
    assert strip_comment("echo '#1' \"a # b\"") == "echo '#1' \"a # b\""


def sandbox(root, tiny_model_dir: str, data_dir: str) -> str:
    """A scratch copy of the repository with its throwaway venv, the offline fixtures and the reader's files."""
    work = os.path.join(str(root), "repo")
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "quickstart-output", "__pycache__", "build", "*.egg-info", ".pytest_cache"))
    python = overlay_venv(os.path.join(work, ".venv"))
    bin_dir = os.path.dirname(python)
    shims = {
        "pip": f'if [ "$1" = install ]; then shift; exec "{python}" -m pip install {" ".join(OFFLINE_PIP)} "$@"; fi\n'
               f'exec "{python}" -m pip "$@"',
        "pytest": f'exec "{python}" -m pytest -p no:cacheprovider "$@"',
        "ftplugins": f'exec "{python}" -m ftplugins.cli "$@"',
    }
    for name, body in shims.items():
        path = os.path.join(bin_dir, name)
        with open(path, "w") as handle:
            handle.write(f"#!/bin/sh\n{body}\n")
        os.chmod(path, 0o755)
    shutil.copytree(tiny_model_dir, os.path.join(work, "runs", "tiny-llama"))
    shutil.copytree(data_dir, os.path.join(work, "runs", "data"))
    for name, text in READER_FILES.items():
        with open(os.path.join(work, name), "w") as handle:
            handle.write(text)
    return work


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every command of a document in one script (its own limit: 1200 s)
@pytest.mark.parametrize("doc", DOCS)
def test_the_commands_of(doc, tmp_path, tiny_model_dir, data_dir):
    runnable = [shortened(c) for c in shell_commands(doc) if why_not_run(c) is None]
    if not runnable:
        pytest.skip(f"{doc} documents no command a test can run (see NOT_RUN)")
    work = sandbox(tmp_path, tiny_model_dir, data_dir)
    script = "set -ex\n" + "\n".join(runnable) + "\n"
    env = {**os.environ, "PATH": os.path.join(work, ".venv", "bin") + os.pathsep + os.environ["PATH"],
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{doc}: a documented command failed\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
