"""Every recipe in recipes/ runs offline (shortened to two steps) and shows its method's own effect.

A recipe runs as a user runs it (``python -m ftplugins.train sft --config RECIPE``) with one more plugin
listed last, ``observer``: it records the weights after every other plugin prepared the model, the
batches the trainer saw and the trainer itself, so each method's check asserts what the method promises
(frozen entries unchanged, adapter present and trained, masked inputs seen, ...). A no-op plugin fails
every check.
"""

from __future__ import annotations

import glob
import json
import os
import re
from importlib.metadata import EntryPoint

import pytest
import torch
import yaml

from ftplugins import hookimpl
from ftplugins.plugin import Plugin
from ftplugins.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml")))
# Extra command-line arguments for every recipe run, e.g. "--use_cpu false" to run the recipes on a GPU machine.
EXTRA_ARGS = os.environ.get("FTPLUGINS_RECIPE_ARGS", "").split()


def declared_entry_points() -> dict[str, EntryPoint]:
    """The built-in plugins pyproject.toml declares (an editable install sees new ones only once reinstalled)."""
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        table = tomllib.load(handle)["project"]["entry-points"]["ftplugins"]
    return {name: EntryPoint(name=name, value=value, group="ftplugins") for name, value in table.items()}


def recipe_plugins(path: str) -> list[str]:
    return yaml.safe_load(open(path)).get("plugins", [])


#: Recipes of a plugin's other mode, whose run must show that mode's effect rather than the plugin's usual one.
RECIPE_CHECKS = {"select_kmeans_rounds_sft.yaml": ["select_kmeans_rounds"]}


def recipe_checks(path: str) -> list[str]:
    """What a recipe's run must show: its plugins' effects, and a plain LoRA's (``use_peft``) without plugins."""
    if os.path.basename(path) in RECIPE_CHECKS:
        return RECIPE_CHECKS[os.path.basename(path)]
    return recipe_plugins(path) or (["lora"] if yaml.safe_load(open(path)).get("use_peft") else [])


def test_one_recipe_per_shipped_method():
    from ftplugins.registry import available_entry_points, load

    covered = {name for path in RECIPES for name in recipe_checks(path)}
    # Methods for transformers.Trainer alone (encoders: pet, ...) have no TRL script to put in a YAML recipe: they run
    # a plain Trainer script through ftplugins.run (recipes/classifiers/: text and tabular (gan_augment),
    # recipes/segmentation/ (samda); tests/test_classifier_recipes.py).
    scripted = {"SFTTrainer", "DPOTrainer", "GRPOTrainer", "DiffusionTrainer"}
    builtin = {name for name, ep in available_entry_points().items()
               if ep.value.startswith("ftplugins.methods.") and load(name).trains
               and (not load(name).trainers or scripted & set(load(name).trainers))}
    assert {"masked_thought", "ssf"} <= builtin
    assert builtin <= covered, f"methods without a recipe: {sorted(builtin - covered)}"
    assert covered <= set(CHECKS), f"recipes whose method's effect no check asserts: {sorted(covered - set(CHECKS))}"


class Observer(Plugin):
    """Listed after the recipe's plugins: sees the model they prepared, the batches, the trained trainer."""

    name = "observer"
    summary = "records what a recipe run did (test only)"

    def __init__(self):
        self.initial: dict[str, torch.Tensor] = {}
        self.batches: list[dict] = []
        self.trainer = None
        self.raw_train = None
        self.data_dir = None

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        if split == "train":
            self.raw_train = dataset  # the rows after every other plugin's transform, before tokenization

    @hookimpl
    def prepare_model(self, run, model):
        self.initial = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
        return model

    @hookimpl
    def data_collator(self, run, collator):
        def recording(features):
            batch = collator(features)
            if isinstance(batch, dict):  # GRPO's collator passes the rows through as a list
                self.batches.append({k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})
            return batch

        return recording

    @hookimpl
    def post_train(self, run, trainer):
        self.trainer = trainer

    # --- what the checks read ---------------------------------------------------------------------------

    def final(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.trainer.model.named_parameters()}

    def changed(self) -> dict[str, torch.Tensor]:
        """name -> boolean mask of the entries that training changed."""
        final = self.final()
        return {n: final[n].cpu() != self.initial[n] for n in self.initial}

    def changed_names(self) -> set[str]:
        return {n for n, mask in self.changed().items() if bool(mask.any())}


@pytest.fixture
def observer(monkeypatch) -> Observer:
    from ftplugins import registry

    plugin = Observer()
    eps = {**declared_entry_points(), **registry.available_entry_points(),
           "observer": EntryPoint(name="observer", value="test_recipes:Observer", group="ftplugins")}
    monkeypatch.setattr(registry, "available_entry_points", lambda: eps)
    monkeypatch.setitem(registry._loaded, "observer", plugin)
    return plugin


def embeddings_and_head(names) -> set[str]:
    return {n for n in names if "embed_tokens" in n or "lm_head" in n}


# --- each method's promise ----------------------------------------------------------------------------------


def adapter_only(obs: Observer, out, peft_type: str, modules: tuple[str, ...]) -> None:
    """A PEFT adapter: saved as one, of its own type; only adapter tensors (on the configured modules) train,
    the base model stays bitwise unchanged, and the adapter moved."""
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == peft_type
    trainable = {n for n, p in obs.trainer.model.named_parameters() if p.requires_grad}
    assert trainable and obs.changed_names() and obs.changed_names() <= trainable
    base = [n for n in obs.initial if n not in trainable]
    assert base and not (obs.changed_names() & set(base))
    if modules:
        assert all(any(m in n for m in modules) for n in trainable), sorted(trainable)


def check_block_lora(obs, out):
    adapter_only(obs, out, "BLOCK_LORA", ("q_proj", "k_proj", "v_proj"))


def check_bottleneck(obs, out):
    adapter_only(obs, out, "BOTTLENECK", ("up_proj", "gate_proj"))


def check_ssf(obs, out):
    adapter_only(obs, out, "SSF", ())


def check_lora(obs, out):
    """``use_peft``: a PEFT LoRA on the denoiser's attention trained (nothing else moved), and it is saved in
    diffusers' format too (``pytorch_lora_weights.safetensors``, what ``pipe.load_lora_weights`` reads)."""
    from safetensors.torch import load_file

    assert (out / "pytorch_lora_weights.safetensors").exists()
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert saved and all("lora" in key for key in saved)
    trainable = {n for n, p in obs.trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and any(f".{m}." in n for m in ("to_q", "to_k", "to_v", "to_out"))
                             for n in trainable)
    assert obs.changed_names() and obs.changed_names() <= trainable


def check_pso(obs, out):
    """The reference set was sampled once (20 rows, cached beside the model) and every training timestep is one of
    the 4-step sampler's (999, 749, 499, 249 for trailing spacing), not the 1000-step grid."""
    from safetensors.torch import load_file

    state = obs.trainer.ftplugins_run.state.get("pso")
    assert state is not None and (out / "pso_reference_latents.safetensors").exists()
    assert load_file(str(out / "pso_reference_latents.safetensors"))["latents"].shape[0] == 20
    assert sorted(state["timesteps"].tolist()) == [249, 499, 749, 999]


def check_bob(obs, out):
    """Every caption the model trained on is the template with its image's class and background (the folder's own
    captions, which name neither, are gone), the background survives tokenization, and the attribute pool beside
    the model records each real image's class and background."""
    pool = json.loads((out / "bob_attributes.json").read_text())
    metadata = os.path.join(obs.data_dir, "backgrounds", "train", "metadata.jsonl")
    real = [json.loads(line) for line in open(metadata)]
    expected = [f"{r['label']}, {r['background']}" for r in real]
    assert sorted(obs.raw_train["caption"]) == sorted(expected)
    assert all(set(r["attributes"]) == {"background"} for r in pool["rows"])
    assert sorted((r["class"], r["attributes"]["background"]) for r in pool["rows"]) == sorted(
        (r["label"], r["background"]) for r in real)
    assert pool["classes"] == sorted({r["label"] for r in real})
    tokenized = {tuple(ids) for ids in obs.trainer.tokenize(expected).tolist()}
    assert len(tokenized) == len(set(expected))  # truncation kept every (class, background) apart
    seen = {tuple(ids) for batch in obs.batches for ids in batch["input_ids"].tolist()}
    assert seen and seen <= tokenized


def check_cls_rl(obs, out):
    """GRPO scored every step's completions with the CLS-RL rewards (after the user's), and logged them."""
    names = list(getattr(obs.trainer, "reward_func_names", []))
    assert names[-2:] == ["cls_rl_format", "cls_rl_accuracy"], names
    logged = [e for e in obs.trainer.state.log_history if "rewards/cls_rl_accuracy/mean" in e]
    assert logged and all(0 <= e["rewards/cls_rl_format/mean"] <= 1 for e in logged)


def check_masked_thought(obs, out):
    """Response inputs replaced, labels kept: at some target position the input id differs from its label
    (plain SFT feeds exactly the labels). The ratio ramps up from 0, so not every batch has masks."""
    masked = 0
    for batch in obs.batches:
        targets = batch["labels"] != -100
        masked += int((batch["input_ids"][targets] != batch["labels"][targets]).sum())
    assert obs.batches and masked > 0


def check_deep_align(obs, out):
    """The token-wise constrained objective: every batch carries the initial model's reference log-probs of its
    tokens (precomputed once, laid out like the inputs), and the weights train."""
    for batch in obs.batches:
        reference = batch["ref_token_logps"]
        assert reference.shape == batch["input_ids"].shape
        assert bool(torch.isfinite(reference).all() and (reference <= 0).all() and (reference < 0).any())
    assert obs.batches and obs.changed_names()


def check_fewshot_prefix(obs, out):
    """k = 4 pool examples before every prompt: each training row holds 5 questions; the 32 pool rows
    never train (at most 256 - 32 rows)."""
    tokenizer = obs.trainer.processing_class
    assert len(obs.trainer.train_dataset) <= 256 - 32
    for batch in obs.batches:
        for row in batch["input_ids"]:
            assert tokenizer.decode(row, skip_special_tokens=True).count("=?") == 5


def check_many_icl(obs, out):
    """Many examples packed into each sequence, the loss on every answer: several label spans per row."""
    spans = []
    for batch in obs.batches:
        for labels in batch["labels"]:
            target = (labels != -100).int()
            spans.append(int(((target[1:] - target[:-1]) == 1).sum()) + int(target[0]))
    assert spans and min(spans) > 1, spans


def check_hft(obs, out):
    """Half of each block frozen: in every layer some matrices are bitwise unchanged, others trained."""
    changed = obs.changed_names()
    layers = {re.search(r"layers\.(\d+)\.", n).group(1) for n in obs.initial if ".layers." in n}
    for layer in layers:
        block = [n for n in obs.initial if f".layers.{layer}." in n]
        moved = [n for n in block if n in changed]
        assert moved and len(moved) < len(block), (layer, moved)


def sparse_delta_matches(obs, out, file: str) -> None:
    """The written sparse delta holds exactly the entries that training changed (θ − θ0 on them)."""
    from ftplugins.sparse.delta import load_delta

    assert (out / file).exists(), f"no {file} beside the model"
    delta = load_delta(str(out / file))
    changed = obs.changed()
    assert delta.nnz > 0
    for name, tensor in delta.tensors.items():
        mask = torch.zeros(tensor.numel, dtype=torch.bool)
        mask[tensor.flat_indices()] = True
        assert not (changed[name].flatten() & ~mask).any(), f"{name}: changed outside the delta"


def check_lift(obs, out):
    """Only the principal entries of each Linear weight change: at most k = (m + n)·4 per matrix, never the
    embeddings or the head; the sparse delta records them."""
    changed = obs.changed()
    moved = obs.changed_names()
    assert moved and not embeddings_and_head(moved)
    for name in moved:
        rows, cols = changed[name].shape
        assert int(changed[name].sum()) <= (rows + cols) * 4, name
    sparse_delta_matches(obs, out, "sparse_delta.safetensors")


def check_sara(obs, out):
    """Only small entries change: |θ0| < τ = 0.002, never the embeddings or the head."""
    moved, changed = obs.changed_names(), obs.changed()
    assert moved and not embeddings_and_head(moved)
    for name in moved:
        mask = changed[name]
        assert bool((obs.initial[name].abs()[mask] < 0.002).all()), name
    sparse_delta_matches(obs, out, "sparse_delta.safetensors")


def check_lt_sft(obs, out):
    """After the full phase and the reset, at most K = 5% of the maskable entries differ from θ0 (the head
    trains dense)."""
    changed = obs.changed()
    maskable = [n for n in changed if "lm_head" not in n]
    total = sum(changed[n].numel() for n in maskable)
    moved = sum(int(changed[n].sum()) for n in maskable)
    assert 0 < moved <= round(0.05 * total)
    sparse_delta_matches(obs, out, "sparse_delta.safetensors")


def check_locft(obs, out):
    """Exactly the named module trains; every other weight is bitwise unchanged."""
    assert obs.changed_names() == {"model.layers.1.mlp.down_proj.weight"}


def check_graft(obs, out):
    """The grafted region is written as a sparse delta: 2-D weights outside the embeddings and the head, a small
    share of them (the base patch is ρ = 0.1%)."""
    from ftplugins.sparse.delta import load_delta

    assert (out / "graft_delta.safetensors").exists()
    delta = load_delta(str(out / "graft_delta.safetensors"))
    region = {n: t for n, t in obs.initial.items() if t.dim() == 2 and n not in embeddings_and_head(obs.initial)}
    assert delta.nnz > 0 and set(delta.tensors) <= set(region)
    assert delta.nnz <= 0.01 * sum(t.numel() for t in region.values()), delta.nnz


def check_s3ft(obs, out):
    """Before training, the model answered every train row and each row took one branch (its own answer, its
    paraphrase, or the gold answer): the report beside the model counts them, one per row trained on."""
    report = json.loads((out / "s3ft_report.json").read_text())
    assert report["self"] + report["paraphrase"] + report["gold"] == report["rows"] == 256
    assert report["generated_rows"] == 256 and len(obs.trainer.train_dataset) == 256


def check_lp_ft(obs, out):
    """Linear probing first: the head's optimizer state counts every step, the body's only the steps after the switch
    (plain SFT: every tensor counts every step)."""
    optimizer = getattr(obs.trainer.optimizer, "optimizer", obs.trainer.optimizer)
    head = obs.trainer.model.get_output_embeddings().weight
    steps = {id(p): int(optimizer.state[p]["step"]) for p in obs.trainer.model.parameters() if p in optimizer.state}
    switch = obs.trainer.state.max_steps // 2  # the recipe's lp_ft_probe_ratio 0.5 of the shortened run
    assert steps.pop(id(head)) == obs.trainer.state.global_step
    assert steps and set(steps.values()) == {obs.trainer.state.global_step - switch}, set(steps.values())


def check_selection(method: str):
    def check(obs, out):
        """Before training, the selection kept 64 of the 256 train rows (every kept row one of the source's,
        unchanged) and wrote its report beside the model."""
        from datasets import load_dataset

        assert (out / f"{method}_report.json").exists()
        kept = obs.trainer.train_dataset
        assert len(kept) == 64
        source = load_dataset("json", data_files=os.path.join(obs.data_dir, "arithmetic", "train.jsonl"), split="train")
        rows = {json.dumps(r, sort_keys=True) for r in source}
        assert all(json.dumps({k: r[k] for k in source.column_names}, sort_keys=True) in rows
                   for r in obs.raw_train) and len(obs.raw_train) == 64

    return check


def check_select_kmeans_rounds(obs, out):
    """Iterative kMQ: 3 disjoint slices of 16 rows, none of them held out, and epoch r trained exactly the rows of
    slices 1..r cycled to the budget's 48 (the token rows of its six batches of 8 are those rows of the tokenized
    pool, which holds duplicate rows: compared as sorted token rows); round 2's and 3's cluster weights were
    recorded."""
    report = json.loads((out / "select_kmeans_report.json").read_text())
    slices = report["slices"]
    assert [len(s) for s in slices] == [16, 16, 16] and len(set(sum(slices, []))) == 48
    assert not set(sum(slices, [])) & set(report["held_out"]) and len(report["cluster_weights"]) == 2
    pool = obs.trainer.train_dataset.rows  # the rounds view over the tokenized pool
    trained = [tuple(ids[mask.bool()].tolist()) for batch in obs.batches
               for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert len(trained) == 3 * 48
    for r in range(3):
        so_far = sum(slices[: r + 1], [])
        rows = [so_far[i % len(so_far)] for i in range(48)]
        assert sorted(trained[48 * r:48 * (r + 1)]) == sorted(tuple(pool[i]["input_ids"]) for i in rows), r


# --- tool and evaluation plugins: what each writes or logs after (or during) the run -------------------------


def check_soup(obs, out):
    """The soup of the last 2 checkpoints is their exact mean."""
    from safetensors.torch import load_file

    soup = load_file(str(out / "soup" / "model.safetensors"))
    first, second = (load_file(str(out / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2))
    assert soup.keys() == first.keys()
    assert all(torch.allclose(soup[k], (first[k] + second[k]) / 2, atol=1e-7) for k in soup)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # two different checkpoints were averaged


def check_intruders(obs, out):
    """Intruder counts were logged at every step (intruders_every 1)."""
    steps = [e["step"] for e in obs.trainer.state.log_history if "intruders/total" in e]
    assert steps == [1, 2]


def check_mbpp_eval(obs, out):
    """pass@1 of the trained model on the 5 tiny MBPP tasks (3 are prompt examples) logged and written."""
    result = json.loads((out / "mbpp_eval.json").read_text())
    assert len(result["tasks"]) == 5 and 0 <= result["metrics"]["pass@1"] <= 1
    assert any("mbpp/pass@1" in e for e in obs.trainer.state.log_history)


def check_infusion_eval(obs, out):
    """Accuracy per FineTuneBench question kind logged and written."""
    result = json.loads((out / "infusion_eval.json").read_text())
    assert {"accuracy/memorization", "accuracy/rephrased", "accuracy"} <= set(result["metrics"])
    assert any("infusion/accuracy" in e for e in obs.trainer.state.log_history)


def check_probe_prune(obs, out):
    """The report compares the initial weights with the trained model: probes per layer, pruned variants, reFT."""
    report = json.loads((out / "probe_prune.json").read_text())
    assert set(report["probes"]) == {"base", "tuned", "pruned_1", "pruned_4"} and report["layers"] == 2
    assert report["behaviour"]["base"]["kl_to_base"] == 0 < report["behaviour"]["tuned"]["kl_to_base"]
    assert len(report["reverse"]["tuned"]["loss"]) == 3 and (out / "probe_prune.png").exists()


def check_contrastive_explore(obs, out):
    """Two contrastive samples per step joined the training pool and the pool file."""
    from ftplugins.tools.cge_pool_plugin import POOL_FILE

    rows = [json.loads(line) for line in (out / POOL_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 2, 2]
    assert len(obs.trainer.train_dataset) == len(obs.raw_train) + 4


CHECKS = {
    "block_lora": check_block_lora, "bottleneck": check_bottleneck, "ssf": check_ssf,
    "masked_thought": check_masked_thought, "cls_rl": check_cls_rl, "deep_align": check_deep_align,
    "fewshot_prefix": check_fewshot_prefix,
    "many_icl": check_many_icl, "hft": check_hft, "lift": check_lift, "sara": check_sara, "lt_sft": check_lt_sft,
    "locft": check_locft, "graft": check_graft, "s3ft": check_s3ft, "lp_ft": check_lp_ft, "lora": check_lora,
    "pso": check_pso, "bob": check_bob,
    **{m: check_selection(m) for m in ("select_kmeans", "select_ot", "select_influence")},
    "select_kmeans_rounds": check_select_kmeans_rounds,
    "soup": check_soup, "intruders": check_intruders, "mbpp_eval": check_mbpp_eval,
    "infusion_eval": check_infusion_eval,
    "probe_prune": check_probe_prune, "contrastive_explore": check_contrastive_explore,
}

#: Per-plugin arguments of the two-step run, so that the plugin acts within two steps (later arguments win).
RUN_ARGS = {
    "soup": ["--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "2", "--soup_last_k", "2"],
    "intruders": ["--intruders_every", "1"],
    "mbpp_eval": ["--mbpp_eval_max_new_tokens", "8"],
    "infusion_eval": ["--infusion_eval_max_new_tokens", "4"],
    "probe_prune": ["--probe_prune_units", "1,4", "--probe_prune_reverse_steps", "2", "--probe_prune_every", "1"],
    "contrastive_explore": ["--contrastive_explore_every", "1", "--contrastive_explore_samples", "2",
                            "--contrastive_explore_max_new_tokens", "4"],
    "select_kmeans_rounds": ["--max_steps", "-1"],  # the rounds are the recipe's 3 epochs (18 steps)
}


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_recipe_runs_and_shows_its_methods_effect(recipe, request, tmp_path, observer):
    out = tmp_path / "out"
    plugins = recipe_plugins(recipe)
    # ``<method>_<command>.yaml``; the recipe's dataset is one of the built-in ones (``ftplugins tiny-data``).
    command = os.path.basename(recipe).rsplit("_", 1)[1].removesuffix(".yaml")
    model_dir, data_dir = (request.getfixturevalue(name) for name in (
        ("tiny_diffusion_dir", "diffusion_data_dir") if command == "diffusion" else ("tiny_model_dir", "data_dir")))
    observer.data_dir = data_dir
    dataset = os.path.basename(yaml.safe_load(open(recipe))["dataset_name"])
    train([command, "--config", recipe, "--model_name_or_path", model_dir, "--dataset_name",
           f"{data_dir}/{dataset}", "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no",
           "--disable_tqdm", "true", "--plugins", ",".join([*plugins, "observer"]),
           *[a for name in recipe_checks(recipe) for a in RUN_ARGS.get(name, [])], *EXTRA_ARGS])
    assert (out / "ftplugins_run.json").exists()
    assert observer.trainer is not None and observer.trainer.state.global_step >= 2
    for name in recipe_checks(recipe):
        CHECKS[name](observer, out)


def test_every_check_fails_on_plain_sft(tiny_model_dir, data_dir, tmp_path, observer):
    """The same run without the method (plain full SFT, the observer alone) fails every method's check."""
    out = tmp_path / "out"
    observer.data_dir = data_dir
    config = yaml.safe_load(open(os.path.join(REPO, "recipes", "masked_thought_sft.yaml")))
    recipe = tmp_path / "plain_sft.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in config.items() if not k.startswith(("plugins", "masked_"))}))
    train(["sft", "--config", str(recipe), "--model_name_or_path", tiny_model_dir, "--dataset_name",
           f"{data_dir}/arithmetic", "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no",
           "--disable_tqdm", "true", "--plugins", "observer", *EXTRA_ARGS])
    passed = []
    for name, check in CHECKS.items():
        try:
            check(observer, out)
        except (AssertionError, KeyError, FileNotFoundError):
            continue
        passed.append(name)
    assert not passed, f"checks that a run without the method passes: {passed}"
