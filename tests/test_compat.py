"""Every private upstream API ftplugins relies on still exists with the parameters we use (ftplugins.compat).

When one of these fails after an upgrade, the message names the upstream change; fix the one function in
``ftplugins/compat.py`` (or the tuner that overrides it), not the plugins.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
from importlib.metadata import version

import pytest
from conftest import cpu_args

import ftplugins
from ftplugins import compat
from ftplugins.compat import RELIED_ON


def resolve(path: str):
    module_name, _, qualname = path.partition(":")
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def release(path: str) -> str:
    package = path.split(".")[0].split(":")[0]
    return f"{package} {version(package)}"


@pytest.mark.parametrize("upstream", RELIED_ON, ids=[u.path for u in RELIED_ON])
def test_each_private_api_exists_with_the_parameters_we_use(upstream):
    try:
        target = resolve(upstream.path)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{upstream.path} is gone in {release(upstream.path)} ({exc}); ftplugins relies on it: "
                    f"{upstream.relies_on}. Adapt ftplugins/compat.py to the new release.")
    if not upstream.parameters:
        return
    parameters = inspect.signature(target).parameters
    missing = [name for name in upstream.parameters if name not in parameters]
    assert not missing, (
        f"{upstream.path} changed in {release(upstream.path)}: it no longer takes {missing} (it takes "
        f"{list(parameters)}); ftplugins relies on it: {upstream.relies_on}. Adapt ftplugins/compat.py."
    )


def test_every_trainer_method_compat_overrides_is_listed_and_exists_in_transformers():
    from transformers import Trainer

    overridden = [name for name, value in vars(compat.TrainerInternals).items()
                  if name.startswith("_") and not name.startswith("__") and callable(value)]
    listed = {u.path.rpartition(".")[2] for u in RELIED_ON if u.path.startswith("transformers.trainer:Trainer.")}
    assert set(overridden) <= listed, f"list {set(overridden) - listed} in compat.RELIED_ON"
    for name in overridden:
        assert callable(getattr(Trainer, name, None)), (
            f"transformers {version('transformers')} has no Trainer.{name}, which ftplugins.compat overrides to call "
            "the plugins' hooks; the hook would silently never fire. Adapt ftplugins/compat.py.")


@pytest.fixture(scope="module")
def sft_trainer(tmp_path_factory):
    from trl import SFTConfig, SFTTrainer

    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    cls = ftplugins.compose(SFTTrainer, [])
    return cls(model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path_factory.mktemp("out")),
               train_dataset=arithmetic_dataset(4), processing_class=tiny_tokenizer())


def test_trl_keeps_logged_metrics_in_per_mode_lists(sft_trainer):
    metrics = compat.trainer_metrics(sft_trainer)
    assert metrics is not None, (
        f"trl {version('trl')}: SFTTrainer has no _metrics['train'] (per-mode lists of logged values); deep_align, "
        "lt_sft and graft log / clear metrics through ftplugins.compat.trainer_metrics: adapt it.")
    metrics["compat/probe"].append(1.0)  # a defaultdict(list): new names need no set-up
    assert sft_trainer._metrics["train"]["compat/probe"] == [1.0]
    metrics.pop("compat/probe")


def test_the_trainer_keeps_signature_columns(sft_trainer):
    assert hasattr(sft_trainer, "_signature_columns"), (
        f"transformers {version('transformers')}: Trainer has no _signature_columns; the dataset_columns hook "
        "writes there (ftplugins.compat.TrainerInternals._set_signature_columns_if_needed): adapt it.")
    sft_trainer._set_signature_columns_if_needed()
    assert "input_ids" in sft_trainer._signature_columns


def test_the_helpers_work_on_this_release(sft_trainer):
    import torch

    batch = compat.prepare_inputs(sft_trainer, next(iter(sft_trainer.get_train_dataloader())))
    assert isinstance(batch["input_ids"], torch.Tensor)
    collated = compat.sft_collator(pad_token_id=0)([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
    assert collated["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    config_map, tuner_map, prefix_map = compat.peft_type_mappings()
    assert prefix_map["LORA"] == "lora_" and "LORA" in config_map and "LORA" in tuner_map


def test_trls_fused_lm_head_is_detected_and_returns_label_log_probs():
    import torch

    from ftplugins.testing import tiny_llama

    model = tiny_llama()
    assert not compat.is_fused_lm_head_patched(model)
    compat.add_fused_lm_head(model)
    assert compat.is_fused_lm_head_patched(model), (
        f"trl {version('trl')}: add_fused_lm_head no longer sets an instance forward taking fused_lm_head; "
        "adapt ftplugins.compat.is_fused_lm_head_patched (reference log-probs and deep_align rely on it).")
    ids = torch.tensor([[1, 5, 6, 7]])
    labels = torch.tensor([[-100, 5, 6, 7]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
        logits = model(input_ids=ids, use_cache=False).logits
    expected = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert out.label_mask.tolist() == [[True, True, True]]
    torch.testing.assert_close(out.log_probs.float(), expected, rtol=1e-4, atol=1e-5)


PRIVATE_NAMES = sorted({u.path.rpartition(".")[2] for u in RELIED_ON if u.path.startswith("transformers.trainer:")}
                       - {"_save", "end"} | {"_metrics", "_signature_columns"})
# composition's atomic save and its wait for every rank still override Trainer._save / end themselves


def uses(name: str, text: str) -> bool:
    """``name`` called or read as an attribute (``x._metrics``, ``super()._clip_grad_norm(``, ``"_metrics"``)."""
    return bool(re.search(rf"\.{re.escape(name)}\b|[\"']{re.escape(name)}[\"']", text))


PRIVATE_MODULES = re.compile(r"^\s*(from|import)\s+(trl\.trainer\.utils|trl\.trainer\.sft_trainer|peft\.mapping)\b",
                             re.MULTILINE)


def test_no_module_but_compat_uses_a_private_upstream_api():
    """Plugins and the core reach upstream internals only through ftplugins.compat (STYLE.md)."""
    root = pathlib.Path(ftplugins.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(root)}: {name}" for name in PRIVATE_NAMES if uses(name, text)]
        offenders += [f"{path.relative_to(root)}: import {m.group(2)}" for m in PRIVATE_MODULES.finditer(text)]
    assert not offenders, f"use ftplugins.compat instead: {offenders}"


def test_dependency_ranges_start_at_the_versions_ci_tests():
    """CI installs constraints.txt: a range admitting older releases would promise what nobody tested."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = pathlib.Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        name, sep, pinned = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower().replace("_", "-")] = Version(pinned.strip())
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    for requirement in map(Requirement, requirements):
        pinned = pins.get(requirement.name.lower().replace("_", "-"))
        if requirement.name == "ftplugins" or pinned is None:
            continue
        assert requirement.specifier.contains(pinned), f"{requirement} excludes the tested {requirement.name}=={pinned}"
        lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lower and lower[0].release[:2] == pinned.release[:2], (
            f"{requirement} admits releases older than the tested {requirement.name}=={pinned}: raise its lower "
            "bound to the tested minor release (or test the older one in CI)")
