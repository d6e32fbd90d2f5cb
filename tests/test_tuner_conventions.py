"""PEFT's conventions, checked the same way on every ftplugins tuner (after PEFT's tests/test_custom_models.py).

One table of cases (a tuner, a model, a config); every check runs on every case, on a plain torch MLP as well
as on a transformers Llama. ``init_weights=False`` gives a random, non-identity adapter, so merging, safe
merging, saving and loading, disabling and switching adapters must visibly change and restore the outputs.
A new ftplugins PEFT tuner joins by adding rows to ``CASES``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import peft
import pytest
import torch
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

import ftplugins  # noqa: F401 - registers the PEFT types
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.testing import tiny_llama

# --- models --------------------------------------------------------------------------------------


class MLP(nn.Module):
    """A plain torch model, no transformers config: what a user's own model looks like to PEFT."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.norm = nn.LayerNorm(20)
        self.lin1 = nn.Linear(20, 20, bias=False)  # a module without a bias, as Llama's projections
        self.head = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.lin1(self.norm(torch.relu(self.lin0(x))))))


@functools.cache
def _base(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return (MLP() if kind == "mlp" else tiny_llama(seed=0)).eval()


def base_model(kind: str) -> nn.Module:
    """A fresh copy of the same base weights (built once per kind)."""
    return copy.deepcopy(_base(kind))


INPUTS = {
    "mlp": {"x": torch.randn(3, 10, generator=torch.Generator().manual_seed(1))},
    "llama": {"input_ids": torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(1))},
}
HEADS = {"mlp": "head", "llama": "lm_head"}


def outputs(model: nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**INPUTS[kind])
    return out if isinstance(out, torch.Tensor) else out.logits


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    peft_type: str
    model: str
    config: dict[str, Any] = field(default_factory=dict)
    mergeable: bool = True

    def make_config(self, **overrides: Any) -> peft.PeftConfig:
        values = {"init_weights": False, **self.config, **overrides}
        return PEFT_TYPE_TO_CONFIG_MAPPING[self.peft_type](**copy.deepcopy(values))

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("ssf-mlp", "SSF", "mlp", {"target_modules": ["lin0", "norm", "lin1"]}),
    # A shift on a module without a bias works unmerged but cannot merge (no bias to fold it into).
    Case("ssf-mlp-shift-without-bias", "SSF", "mlp", {"target_modules": ["lin0", "lin1", "norm"],
                                                      "shift_without_bias": True}, mergeable=False),
    Case("ssf-llama", "SSF", "llama"),
    Case("block_lora-mlp", "BLOCK_LORA", "mlp", {"target_modules": ["lin0", "lin1"], "num_blocks": 2, "r": 4}),
    Case("block_lora-llama", "BLOCK_LORA", "llama", {"num_blocks": 4}),
    Case("block_lora-llama-all-linear", "BLOCK_LORA", "llama", {"target_modules": "all-linear", "num_blocks": 4}),
    Case(
        "bottleneck-mlp-parallel-linear",
        "BOTTLENECK",
        "mlp",
        {"preset": "llm_adapters_parallel", "target_modules": ["lin0", "lin1"], "activation": "identity",
         "bottleneck_size": 4},
    ),
    Case(
        "bottleneck-mlp-series-output",
        "BOTTLENECK",
        "mlp",
        {"target_modules": ["lin0", "lin1"], "series_side": "output", "bottleneck_size": 4},
        mergeable=False,
    ),
    Case("bottleneck-llama-series", "BOTTLENECK", "llama", {"bottleneck_size": 4}, mergeable=False),
    Case(
        "bottleneck-llama-parallel-linear",
        "BOTTLENECK",
        "llama",
        {"preset": "llama_parallel", "activation": "identity", "bottleneck_size": 4},
    ),
    Case("bottleneck-llama-houlsby", "BOTTLENECK", "llama", {"preset": "houlsby", "bottleneck_size": 4},
         mergeable=False),
]

every_case = pytest.mark.parametrize("case", CASES, ids=str)
mergeable_cases = pytest.mark.parametrize("case", [c for c in CASES if c.mergeable], ids=str)
llama_cases = pytest.mark.parametrize("case", [c for c in CASES if c.model == "llama"], ids=str)


def test_the_table_covers_every_ftplugins_peft_type():
    from ftplugins import registry

    owned = {getattr(registry.load(n), "peft_type", None) for n in registry.installed_names()} - {None}
    assert owned <= {case.peft_type for case in CASES}
    for peft_type in owned:
        assert {case.model for case in CASES if case.peft_type == peft_type} == {"mlp", "llama"}, peft_type


def wrapped(case: Case, adapter_name: str = "default", **overrides: Any) -> peft.PeftModel:
    return peft.get_peft_model(base_model(case.model), case.make_config(**overrides), adapter_name=adapter_name)


def tuner_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    """Tuner layers by their names in the base model (what target_modules / exclude_modules name)."""
    model = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own tensors (adapters and PEFT wrappers left out), keyed as in the plain model."""
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items() if not _is_adapter_key(k)}


def _is_adapter_key(key: str) -> bool:
    """An adapter's own tensor, or a PEFT copy of a module (``modules_to_save``)."""
    return _is_tuner_key(key) or "modules_to_save" in key or "original_module" in key


def _is_tuner_key(key: str) -> bool:
    return any(prefix in key for prefix in ("ssf_", "block_lora_", "bottleneck_"))


# --- init_weights ---------------------------------------------------------------------------------


@every_case
def test_init_weights_true_is_the_identity_and_false_is_not(case):
    base = outputs(base_model(case.model), case.model)
    assert torch.equal(outputs(wrapped(case, init_weights=True), case.model), base)
    assert not torch.allclose(outputs(wrapped(case), case.model), base, atol=1e-6)


@pytest.mark.parametrize("peft_type", ["SSF", "BOTTLENECK", "BLOCK_LORA"])
def test_init_weights_rejects_values_it_does_not_know(peft_type):
    with pytest.raises(ValueError, match="init_weights 'gaussian': expected one of True, False"):
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](init_weights="gaussian")


@pytest.mark.parametrize(("peft_type", "old", "new"), [("SSF", "normal", False), ("SSF", "identity", True),
                                                      ("BOTTLENECK", "bert", False), ("BOTTLENECK", "petl_zero",
                                                                                         "petl_zero")])
def test_the_old_init_field_still_loads_and_says_what_to_use(peft_type, old, new):
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    with pytest.warns(FutureWarning, match=f"use init_weights={new!r}"):
        config = config_cls(init=old)
    assert config.init_weights == new and "init" not in config.to_dict()
    with pytest.raises(ValueError, match="disagree"):
        config_cls(init=old, init_weights="petl_zero" if new is False else False)


# --- training, save and load ----------------------------------------------------------------------


@every_case
def test_a_training_step_changes_the_adapter_only(case):
    model = wrapped(case)
    model.train()
    before = base_state(model)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(_is_adapter_key(n) for n in trainable)
    out = model(**INPUTS[case.model])
    (out if isinstance(out, torch.Tensor) else out.logits).pow(2).mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if p.requires_grad)
    after = base_state(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@every_case
@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
def test_save_and_load_restore_the_outputs(case, safe_serialization, tmp_path):
    model = wrapped(case)
    model.save_pretrained(str(tmp_path), safe_serialization=safe_serialization)
    weights = "adapter_model.safetensors" if safe_serialization else "adapter_model.bin"
    assert (tmp_path / weights).is_file()
    loaded = peft.PeftModel.from_pretrained(base_model(case.model), str(tmp_path))
    assert torch.equal(outputs(loaded, case.model), outputs(model, case.model))
    assert set(get_peft_model_state_dict(loaded)) == set(get_peft_model_state_dict(model))


@every_case
def test_modules_to_save_train_in_full_and_are_saved(case, tmp_path):
    head = HEADS[case.model]
    model = wrapped(case, modules_to_save=[head])
    assert not any(name.split(".")[-1] == head for name in tuner_layers(model))  # never adapted as well
    copy_of_head = model.get_base_model().get_submodule(head).modules_to_save["default"]
    assert all(p.requires_grad for p in copy_of_head.parameters())
    with torch.no_grad():
        copy_of_head.weight.mul_(2)
    model.save_pretrained(str(tmp_path))
    loaded = peft.PeftModel.from_pretrained(base_model(case.model), str(tmp_path))
    assert torch.equal(outputs(loaded, case.model), outputs(model, case.model))


# --- merge, safe merge, unmerge, disable ----------------------------------------------------------


@mergeable_cases
def test_merge_and_unload_keeps_the_outputs_and_the_architecture(case):
    model = wrapped(case)
    adapted = outputs(model, case.model)
    merged = model.merge_and_unload()
    assert not tuner_layers(merged) and type(merged) is type(_base(case.model))
    assert torch.allclose(outputs(merged, case.model), adapted, atol=1e-5)
    assert not torch.allclose(outputs(merged, case.model), outputs(_base(case.model), case.model), atol=1e-6)


@mergeable_cases
def test_safe_merge_merges_a_sound_adapter_and_refuses_a_broken_one_untouched(case):
    model = wrapped(case)
    adapted = outputs(model, case.model)
    model.merge_adapter(safe_merge=True)
    assert torch.allclose(outputs(model, case.model), adapted, atol=1e-5)
    model.unmerge_adapter()

    broken = wrapped(case)
    before = base_state(broken)
    with torch.no_grad():
        next(p for n, p in broken.named_parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        broken.merge_adapter(safe_merge=True)
    after = base_state(broken)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@mergeable_cases
def test_unmerge_restores_the_base_weights(case):
    model = wrapped(case)
    before = base_state(model)
    model.merge_adapter()
    assert any(not torch.equal(base_state(model)[k], v) for k, v in before.items())
    model.unmerge_adapter()
    after = base_state(model)
    assert all(torch.allclose(after[k], v, atol=1e-5) for k, v in before.items())


@pytest.mark.parametrize("case", [c for c in CASES if not c.mergeable], ids=str)
def test_an_unmergeable_adapter_is_refused_before_anything_changes(case):
    model = wrapped(case)
    adapted, before = outputs(model, case.model), base_state(model)
    with pytest.raises(FtpluginsError, match="cannot be merged"):
        model.merge_and_unload()
    assert torch.equal(outputs(model, case.model), adapted)
    after = base_state(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@every_case
def test_disable_adapter_gives_the_base_outputs_and_enables_again(case):
    model = wrapped(case)
    adapted, base = outputs(model, case.model), outputs(_base(case.model), case.model)
    with model.disable_adapter():
        assert torch.allclose(outputs(model, case.model), base, atol=1e-6)
    assert torch.equal(outputs(model, case.model), adapted)
    if case.mergeable:  # disabling a merged adapter unmerges it
        model.merge_adapter()
        with model.disable_adapter():
            assert torch.allclose(outputs(model, case.model), base, atol=1e-5)


# --- several adapters -----------------------------------------------------------------------------


@every_case
@pytest.mark.parametrize("names", [("default", "other"), ("adapter", "adapter1"), ("a1", "other_a1")], ids="-".join)
def test_several_adapters_add_set_delete_and_save_apart(case, names, tmp_path):
    first, second = names
    torch.manual_seed(0)
    model = wrapped(case, adapter_name=first)
    only_first = outputs(model, case.model)
    torch.manual_seed(1)
    model.add_adapter(second, case.make_config())
    assert torch.equal(outputs(model, case.model), only_first)  # adding does not activate
    model.set_adapter(second)
    only_second = outputs(model, case.model)
    assert not torch.allclose(only_second, only_first, atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(f".{second}." in n or n.endswith(f".{second}") for n in trainable), trainable[:3]

    model.save_pretrained(str(tmp_path))  # PEFT's layout: "default" in tmp_path, any other name in tmp_path/NAME
    saved = {name: str(tmp_path if name == "default" else tmp_path / name) for name in names}
    loaded = peft.PeftModel.from_pretrained(base_model(case.model), saved[second], adapter_name=second)
    assert torch.equal(outputs(loaded, case.model), only_second)
    loaded.load_adapter(saved[first], adapter_name=first)
    loaded.set_adapter(first)
    assert torch.equal(outputs(loaded, case.model), only_first)

    model.set_adapter(first)
    model.delete_adapter(second)
    assert list(model.peft_config) == [first]
    assert not any(f".{second}." in k for k in model.state_dict())
    assert torch.equal(outputs(model, case.model), only_first)


@every_case
def test_two_active_adapters_act_together_and_merge_together(case):
    # No modules_to_save: PEFT keeps one active copy of a saved module (houlsby trains its LayerNorms in full).
    torch.manual_seed(0)
    model = wrapped(case, adapter_name="first", modules_to_save=[])
    first = outputs(model, case.model)
    torch.manual_seed(1)
    model.add_adapter("second", case.make_config(modules_to_save=[]))
    model.base_model.set_adapter(["first", "second"])
    both = outputs(model, case.model)
    assert not torch.allclose(both, first, atol=1e-6)
    if case.mergeable:
        merged = model.merge_and_unload(adapter_names=["first", "second"])
        assert not tuner_layers(merged)
        assert torch.allclose(outputs(merged, case.model), both, atol=1e-5)


# --- which modules: target_modules, exclude_modules, layers_to_transform ----------------------------


@every_case
def test_exclude_modules_leaves_a_targeted_module_alone(case):
    targeted = sorted(tuner_layers(wrapped(case)))
    excluded = targeted[-1]
    model = wrapped(case, exclude_modules=[excluded])
    assert excluded not in tuner_layers(model) and tuner_layers(model)


def layer_of(name: str) -> int | None:
    """The decoder layer a module of the Llama lies in (None: outside the layers, e.g. the final norm)."""
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


@llama_cases
def test_layers_to_transform_adapts_only_those_layers(case):
    everywhere = tuner_layers(wrapped(case))
    assert {layer_of(name) for name in everywhere} - {None} == {0, 1}
    for layers in ([1], 0):
        model = wrapped(case, layers_to_transform=layers, layers_pattern="layers")
        wanted = {layers} if isinstance(layers, int) else set(layers)
        assert set(tuner_layers(model)) == {name for name in everywhere if layer_of(name) in wanted}


def test_layers_pattern_without_layers_to_transform_is_refused():
    with pytest.raises(ValueError, match="layers_pattern 'layers' is set without layers_to_transform"):
        PEFT_TYPE_TO_CONFIG_MAPPING["SSF"](layers_pattern="layers")


# --- inject_adapter_in_model and low_cpu_mem_usage ------------------------------------------------


@every_case
def test_inject_adapter_in_model_and_its_state_dict(case):
    model = peft.inject_adapter_in_model(case.make_config(), base_model(case.model))
    assert not isinstance(model, peft.PeftModel) and tuner_layers(model)
    state = get_peft_model_state_dict(model)
    saved_modules = tuple(model.peft_config["default"].modules_to_save or ())
    assert state and all(_is_tuner_key(k) or k.rsplit(".", 1)[0].endswith(saved_modules) for k in state)
    other = peft.inject_adapter_in_model(case.make_config(init_weights=True), base_model(case.model))
    assert not torch.equal(outputs(other, case.model), outputs(model, case.model))
    set_peft_model_state_dict(other, state)
    assert torch.equal(outputs(other, case.model), outputs(model, case.model))


@every_case
def test_low_cpu_mem_usage_keeps_adapter_weights_on_meta_until_loaded(case, tmp_path):
    model = wrapped(case)
    model.save_pretrained(str(tmp_path))
    empty = peft.inject_adapter_in_model(case.make_config(), base_model(case.model), low_cpu_mem_usage=True)
    adapter = {k: p for k, p in empty.named_parameters() if _is_tuner_key(k)}
    assert adapter and all(p.is_meta for p in adapter.values())
    assert not any(p.is_meta for k, p in empty.named_parameters() if not _is_tuner_key(k))
    state = get_peft_model_state_dict(model.get_base_model())  # keyed like the plain model ``empty`` is
    set_peft_model_state_dict(empty, state, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in empty.parameters())
    assert torch.equal(outputs(empty, case.model), outputs(model, case.model))

    loaded = peft.PeftModel.from_pretrained(base_model(case.model), str(tmp_path), low_cpu_mem_usage=True)
    assert torch.equal(outputs(loaded, case.model), outputs(model, case.model))


# --- bottleneck on a model LLM-Adapters' tables do not know ----------------------------------------


def test_bottleneck_series_on_a_custom_model_needs_the_side_and_works_with_it():
    config = PEFT_TYPE_TO_CONFIG_MAPPING["BOTTLENECK"]
    with pytest.raises(OptionError, match=r"which side of lin0, lin1 a series adapter goes on.*_series_side"):
        peft.get_peft_model(MLP(), config(target_modules=["lin0", "lin1"], bottleneck_size=4))
    with pytest.raises(Exception, match="no default target modules for MLP"):
        peft.get_peft_model(MLP(), config(bottleneck_size=4))
    model = peft.get_peft_model(MLP(), config(target_modules=["lin0", "lin1"], series_side="input", bottleneck_size=4))
    roles = model.peft_config["default"].layer_roles
    assert roles == {"lin0": {"placement": "series_input"}, "lin1": {"placement": "series_input"}}
