"""``ftplugins new NAME [DIR]``: write a pip-installable plugin package that passes its own test.

The package is what a third-party method needs and nothing more: ``pyproject.toml`` with the entry
point in the group ``ftplugins``, one module holding an options dataclass and a plugin with one hook,
a test that trains the tiny offline model of :mod:`ftplugins.testing` through the installed entry
point, and a README. The hook (freeze the first decoder layers) is a placeholder with an observable
effect, so the test shows how to assert a method's invariant; replace both with your method.
"""

from __future__ import annotations

import keyword
import os
import re
from string import Template

from .errors import FtpluginsError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

PYPROJECT = Template('''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$title: an ftplugins plugin."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["ftplugins"]

[project.optional-dependencies]
test = ["pytest"]

# The entry point makes the package a plugin: `--plugins $name` finds it once it is installed.
[project.entry-points.ftplugins]
$name = "$module:plugin"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

MODULE = Template('''"""$title: an ftplugins plugin.

Options are one dataclass whose fields start with ``${name}_``; the plugin implements hooks of
``ftplugins/hookspecs.py``. Keep torch / transformers imports inside the hooks, so ``ftplugins list``
stays fast. The hook below is a placeholder (freeze the first decoder layers): replace it with your method.
"""

import re
from dataclasses import dataclass, field

from ftplugins import Plugin, hookimpl
from ftplugins.errors import UnsupportedModelError
from ftplugins.options import check_range


@dataclass
class ${classname}Options:
    ${name}_frozen_layers: int = field(
        default=1, metadata={"help": "How many of the first decoder layers stay frozen (placeholder option)."}
    )

    def __post_init__(self):
        check_range("${name}_frozen_layers", self.${name}_frozen_layers, 0, 10_000)


class ${classname}Plugin(Plugin):
    name = "$name"
    summary = "$title (describe the method in one line)."
    paper = ""  # the method's citation and arXiv id, if it comes from a paper
    options = ${classname}Options
    distributed = ("single", "ddp")

    @hookimpl
    def prepare_model(self, run, model):
        frozen = run.options_for(self).${name}_frozen_layers
        matched = False
        for param_name, param in model.named_parameters():
            layer = re.search(r"\\.layers\\.(\\d+)\\.", param_name)
            if layer is not None:
                matched = True
                if int(layer.group(1)) < frozen:
                    param.requires_grad_(False)
        if not matched:
            raise UnsupportedModelError(
                f"$name: {type(model).__name__} has no parameters named like '.layers.N.'; "
                "it freezes decoder layers by index."
            )
        return model


plugin = ${classname}Plugin()
''')

TEST = Template('''"""$title: trains through its installed entry point; the frozen layers stay unchanged."""

import pytest
import torch
from trl import SFTConfig, SFTTrainer

import ftplugins
from ftplugins.errors import OptionError
from ftplugins.registry import load
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer


def test_the_entry_point_is_installed():
    assert load("$name").name == "$name"


def test_training_changes_only_the_layers_left_trainable(tmp_path):
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer_cls = ftplugins.compose(SFTTrainer, ["$name"], ${name}_frozen_layers=1)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=2,
                     per_device_train_batch_size=2, learning_rate=1e-2, save_strategy="no",
                     disable_tqdm=True)
    trainer = trainer_cls(model=model, args=args, train_dataset=arithmetic_dataset(16),
                          processing_class=tiny_tokenizer())
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if ".layers.0." in n)
    assert any(not torch.equal(after[n], before[n]) for n in before if ".layers.1." in n)


def test_a_bad_option_names_itself():
    with pytest.raises(OptionError, match="${name}_frozen_layers"):
        ftplugins.compose(SFTTrainer, ["$name"], ${name}_frozen_layers=-1)
''')

README = Template('''# $dist

$title, as an [ftplugins](https://pypi.org/project/ftplugins/) plugin.

```bash
pip install -e .
ftplugins info $name
pytest                   # trains the tiny offline model of ftplugins.testing for two steps
python -m ftplugins.train sft --config my_sft.yaml --plugins $name --${name}_frozen_layers 1
```

The entry point in `pyproject.toml` (group `ftplugins`) is what registers the plugin. Replace the
placeholder hook and option in `$module/__init__.py` with your method, and the test with the
invariants your method promises.
''')


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name) or keyword.iskeyword(name):
        raise FtpluginsError(
            f"ftplugins new {name!r}: a plugin name is lowercase letters, digits and underscores, starting "
            "with a letter (it prefixes every option and is what users type after --plugins), e.g. my_method."
        )


def scaffold(name: str, directory: str | None = None) -> str:
    """Write the package for plugin ``name`` into ``directory`` (default ``./ftplugins-<name>``); returns it."""
    check_name(name)
    dist = "ftplugins-" + name.replace("_", "-")
    directory = directory or dist
    if os.path.exists(directory) and os.listdir(directory):
        raise FtpluginsError(f"ftplugins new {name}: {directory} already exists and is not empty; "
                             "name a new or empty folder as the second argument.")
    module = "ftplugins_" + name
    values = {
        "name": name,
        "dist": dist,
        "module": module,
        "classname": "".join(part.title() for part in name.split("_")),
        "title": name.replace("_", " ").capitalize(),
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        os.path.join(module, "__init__.py"): MODULE,
        os.path.join("tests", f"test_{name}.py"): TEST,
    }
    for relative, template in files.items():
        path = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(template.substitute(values))
    return directory
