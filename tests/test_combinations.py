"""Every pair of built-in plugins either trains together, in either order, or is refused before anything loads.

The pairs are generated from the installed built-in plugins, so a new method joins the matrix by being installed.
Whether a pair composes is what the plugins declare (``claims`` / ``excludes``, :mod:`ftplugins.combinations`); this
file checks that the declaration is true: a composing pair really trains a step in both orders (no crash after the
model loaded, as ``lift,hft`` did), a refused pair is refused at class composition in both orders, naming both.
Rule for plugins that do not train (``trains = False``, e.g. aligned_prefix, a generation-time defence): they are
refused in any training run, alone or paired, by their own ``validate`` — before the model loads. graft trains
nothing itself but acts after training on what the run changed in the base weights: it composes with every plugin
that trains base weights and excludes adapters (the base stays unchanged under one).
Plugins for other trainers (``trainers`` without ``SFTTrainer``: cls_rl's GRPO rewards, the encoder methods on
``transformers.Trainer``) are paired here on SFTTrainer, where the core must refuse them by name before the model
loads; their own test files train them on their trainer.
The tool and evaluation plugins (soup, intruders, mbpp_eval, infusion_eval, probe_prune, contrastive_explore) are in
the matrix too: they act beside any method (callbacks, train_begin, post_train) and claim no role, so each of their
pairs must train. The plugins are the ones pyproject.toml declares, used as objects, so a plugin added on a branch is
paired before the shared environment is reinstalled.
"""

from __future__ import annotations

import itertools
import os

import pytest

import ftplugins
from ftplugins import hookimpl
from ftplugins.combinations import conflict
from ftplugins.errors import FtpluginsError, HookConflictError
from ftplugins.plugin import Plugin
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_plugins() -> dict:
    """name -> plugin object of every built-in plugin pyproject.toml declares (methods, tools, harnesses)."""
    import tomllib
    from importlib.metadata import EntryPoint

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        table = tomllib.load(handle)["project"]["entry-points"]["ftplugins"]
    return {name: EntryPoint(name=name, value=value, group="ftplugins").load() for name, value in table.items()
            if value.startswith(("ftplugins.methods.", "ftplugins.tools.", "ftplugins.eval."))}


PLUGINS = declared_plugins()
BUILTIN = sorted(PLUGINS)
PAIRS = list(itertools.combinations(BUILTIN, 2))

#: Options that make each plugin's one training step quick on the tiny model (nothing about combinations).
FAST = dict(
    graft_epochs=1, graft_max_batches=1, s3ft_judge="numeric", s3ft_max_new_tokens=4, s3ft_cache=False,
    s3ft_paraphrase=False, many_icl_shots=2, many_icl_task_column="", fewshot_prefix_k=1, fewshot_prefix_pool_size=2,
    locft_modules="model.layers.1.mlp.down_proj", locft_target_column="answer", locft_batch_size=2,
    select_kmeans_budget=4, select_kmeans_clusters=2, select_kmeans_quality="none", select_kmeans_cache_dir="none",
    select_ot_budget=4, select_ot_cache_dir="none",
    select_ot_target=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "data",
                                  "select_ot_target.jsonl"),
    select_influence_budget=4, select_influence_strata=2, select_influence_depth=10,
    select_influence_damping=0.3, select_influence_cache_dir="none",  # a random tiny model: see its recipe
    soup_last_k=2, intruders_every=1, mbpp_eval_data=os.path.join(REPO, "ftplugins", "eval", "data", "mbpp_tiny.jsonl"),
    mbpp_eval_max_new_tokens=2,
    infusion_eval_data=os.path.join(REPO, "ftplugins", "eval", "data", "finetunebench_tiny.csv"),
    infusion_eval_max_new_tokens=2, probe_prune_data=os.path.join(REPO, "recipes", "data", "probe_prune_digits.jsonl"),
    probe_prune_units="1", probe_prune_probe="torch", contrastive_explore_every=1, contrastive_explore_samples=1,
    contrastive_explore_max_new_tokens=2,
)

#: Training arguments a plugin needs to act at all in the one-step run (the soup averages saved checkpoints).
TRAIN_ARGS = {"soup": dict(save_strategy="steps", save_steps=1)}

#: Pairs that compose but whose analysis cannot apply: intruders and probe_prune read the merged weight matrices, and
#: bottleneck's default (series) adapters have none. The run must stop with the one-line error that says so.
NEEDS_MERGED_WEIGHTS = {frozenset(("bottleneck", "intruders")), frozenset(("bottleneck", "probe_prune"))}



@pytest.fixture(scope="module")
def parts():
    from ftplugins.testing import arithmetic_dataset, tiny_tokenizer

    return tiny_tokenizer(), arithmetic_dataset(6)


def applies_to_sft(plugin):
    return not plugin.trainers or "SFTTrainer" in plugin.trainers


def train_one_step(names, parts, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from ftplugins.testing import tiny_llama

    tokenizer, data = parts
    options = {k: v for k, v in FAST.items() if k.startswith(tuple(f"{n}_" for n in names))}
    cls = ftplugins.compose(SFTTrainer, [PLUGINS[n] for n in names], **options)
    extra = {k: v for n in names for k, v in TRAIN_ARGS.get(n, {}).items()}
    args = SFTConfig(output_dir=str(tmp_path / "-".join(names)), use_cpu=True, bf16=False, report_to="none",
                     max_steps=1, per_device_train_batch_size=2, disable_tqdm=True, max_length=64, seed=0,
                     **{"save_strategy": "no", **extra})
    trainer = cls(model=tiny_llama(), args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return trainer


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_pair_composes_in_either_order_or_is_refused_naming_both(first, second, parts, tmp_path):
    a, b = PLUGINS[first], PLUGINS[second]
    # Plugins that do not train, or train on another trainer (pso: DiffusionTrainer; pet, levi: Trainer), are
    # refused on this SFT run by name, before anything loads; their own pairs are trained in their tests.
    idle = [p for p in (a, b) if not p.trains or not applies_to_sft(p)]
    for names in ((first, second), (second, first)):
        if idle:
            from trl import SFTConfig, SFTTrainer

            options = {k: v for k, v in FAST.items() if k.startswith(tuple(f"{n}_" for n in names))}
            args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
            # A model path that does not exist: the refusal must come before anything is loaded (at composition
            # when the pair also claims one role).
            with pytest.raises(FtpluginsError, match="|".join(p.name for p in idle)):
                cls = ftplugins.compose(SFTTrainer, [PLUGINS[n] for n in names], **options)
                cls(model=str(tmp_path / "never-loaded"), args=args, train_dataset=parts[1])
        elif conflict(a, b):
            with pytest.raises(HookConflictError) as refused:
                train_one_step(names, parts, tmp_path)
            message = str(refused.value)
            assert f"plugins {names[0]} and {names[1]} cannot be combined" in message
            assert "Select one of them" in message
        elif frozenset(names) in NEEDS_MERGED_WEIGHTS:
            with pytest.raises(FtpluginsError, match="cannot merge|cannot be merged"):
                train_one_step(names, parts, tmp_path)
        else:
            trainer = train_one_step(names, parts, tmp_path)
            assert trainer.state.global_step == 1
            assert [p.name for p in trainer.ftplugins_run.plugins] == list(names)


@pytest.mark.parametrize("name", [n for n in BUILTIN if not PLUGINS[n].trains])
def test_a_plugin_that_does_not_train_is_refused_alone_too(name, tmp_path, parts):
    from trl import SFTConfig, SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [PLUGINS[name]])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(FtpluginsError, match=name):
        cls(model=str(tmp_path / "never-loaded"), args=args, train_dataset=parts[1])


@pytest.mark.parametrize("pair", [("lift", "hft"), ("sara", "hft"), ("lt_sft", "hft"), ("lift", "sara"),
                                  ("lift", "lt_sft"), ("sara", "lt_sft")])
def test_the_pairs_that_crashed_are_refused_when_composed(pair):
    """These crashed after the model loaded, or with a raw ``TypeError: duplicate base class``."""
    from trl import SFTTrainer

    for names in (pair, pair[::-1]):
        with pytest.raises(HookConflictError, match=f"{names[0]} and {names[1]} cannot be combined.*trainable_set"):
            ftplugins.compose(SFTTrainer, list(names))


def test_the_train_command_refuses_a_pair_before_the_model_loads(tmp_path):
    from ftplugins.train import train

    with pytest.raises(HookConflictError, match="hft and lift cannot be combined"):
        train(["sft", "--model_name_or_path", str(tmp_path / "never-loaded-either"), "--plugins", "hft,lift",
               "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"])


class SharedMixin:
    def compute_loss(self, *args, **kwargs):
        return super().compute_loss(*args, **kwargs)


class RefinedMixin(SharedMixin):
    pass


class Contributes(Plugin):
    summary = "contributes trainer mixins"
    paper = "n/a"

    def __init__(self, name, mixins):
        self.name, self._mixins = name, mixins

    @hookimpl
    def trainer_mixins(self, run):
        return list(self._mixins)


def test_a_mixin_shared_by_two_plugins_is_composed_once():
    from trl import SFTTrainer

    cls = ftplugins.compose(SFTTrainer, [Contributes("a", [SharedMixin]), Contributes("b", [SharedMixin])])
    assert cls.__mro__.count(SharedMixin) == 1


def test_mixins_without_a_consistent_order_name_both_plugins():
    from trl import SFTTrainer

    # x's mixin would come before its own subclass: no consistent method order exists.
    with pytest.raises(HookConflictError, match="plugins x and y contribute trainer mixins that cannot be combined"):
        ftplugins.compose(SFTTrainer, [Contributes("x", [SharedMixin]), Contributes("y", [RefinedMixin])])


def test_a_third_party_role_is_one_plugin_per_run_too():
    from trl import SFTTrainer

    class Claims(Plugin):
        summary = "claims a role of its own"
        paper = "n/a"
        claims = {"reward_model": "scores the samples with its own model"}

        def __init__(self, name):
            self.name = name

    with pytest.raises(HookConflictError, match="p and q cannot be combined: both claim 'reward_model'"):
        ftplugins.compose(SFTTrainer, [Claims("p"), Claims("q")])
