"""Adapters of every ftplugins PEFT type load through PEFT's and transformers' own loaders in a fresh process.

A user shares an adapter with someone who loads it with PEFT or transformers, after nothing but
``import ftplugins``: ``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM.from_pretrained`` (which finds
the base through ``base_model_name_or_path``) and ``AutoModelForCausalLM.from_pretrained`` on the adapter
folder. The types come from the installed plugins, so a new adapter plugin is covered without editing this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import peft
import pytest
import torch

import ftplugins
from ftplugins import registry
from ftplugins.testing import save_tiny_llama

HERE = os.path.dirname(os.path.abspath(__file__))
LOADERS = ("PeftModel", "AutoPeftModelForCausalLM", "AutoModelForCausalLM")


def adapter_plugins() -> list[str]:
    """Installed plugins that own a PEFT type."""
    return [name for name in registry.installed_names() if getattr(registry.load(name), "peft_type", None)]


def test_the_builtin_adapter_plugins_are_found():
    assert {"ssf", "bottleneck", "block_lora"} <= set(adapter_plugins())


def test_import_ftplugins_imports_neither_peft_nor_torch():
    code = "import sys, ftplugins; assert 'peft' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_importing_peft_after_ftplugins_registers_every_type_and_leaves_peft_as_it_was():
    code = (
        "import sys, ftplugins, peft; from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m; "
        "from ftplugins import registry; "
        "types = [registry.load(n).peft_type for n in registry.installed_names() if registry.load(n).peft_type]; "
        "assert types and all(t in m for t in types), types; "
        "assert type(peft.__loader__).__module__.startswith('_frozen_importlib'), peft.__loader__; "
        "assert not [f for f in sys.meta_path if 'ftplugins' in type(f).__module__], sys.meta_path"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A base saved to a folder, one adapter per PEFT type on it (moved off the identity), reference logits."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("loaders")
    base_dir = save_tiny_llama(str(root / "base"), seed=0)
    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.save(ids, root / "ids.pt")
    adapters = {}
    for name in adapter_plugins():
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        with torch.no_grad():
            base_logits = base(input_ids=ids).logits
        model = peft.get_peft_model(base, ftplugins.peft_config(name))
        with torch.no_grad():  # an adapter still at the identity would "load" even if nothing were read
            for param in (p for p in model.parameters() if p.requires_grad):
                param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
            reference = model(input_ids=ids).logits
        assert not torch.allclose(reference, base_logits), name
        model.save_pretrained(str(root / name))
        adapters[name] = (str(root / name), reference)
    return root, base_dir, adapters


def test_saved_adapters_record_their_base_folder(saved):
    _, base_dir, adapters = saved
    for adapter_dir, _ in adapters.values():
        config = json.loads(open(os.path.join(adapter_dir, "adapter_config.json")).read())
        assert config["base_model_name_or_path"] == base_dir


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
def test_every_ftplugins_type_loads_through_the_standard_loader_in_a_fresh_process(saved, loader):
    root, base_dir, adapters = saved
    outputs = {adapter_dir: str(root / f"{name}.{loader}.pt") for name, (adapter_dir, _) in adapters.items()}
    spec = root / f"{loader}.json"
    spec.write_text(json.dumps({"loader": loader, "base": base_dir, "ids": str(root / "ids.pt"), "adapters": outputs}))
    child = os.path.join(HERE, "peft_loaders_child.py")
    result = subprocess.run([sys.executable, child, str(spec)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (adapter_dir, reference) in adapters.items():
        assert torch.equal(torch.load(outputs[adapter_dir]), reference), f"{name} through {loader}"
