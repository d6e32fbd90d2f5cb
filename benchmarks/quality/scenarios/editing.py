"""Editing: LocFT-BF (one MLP module, breadth-first, target-only loss) vs full fine-tuning on the same edits.

A toy fact store on the character-level decoder, then counterfactual edits of its facts (the
CounterFact setting), all scored with the plugin's own ``ftplugins.methods.locft.evaluate_edits``:

* **Fact model** (the pre-edit model): the cached pre-trained decoder, fine-tuned once with plain SFT
  on 96 synthetic facts ``f:<ab>-<cd>=`` → `` <xyz>`` (a key of two letter pairs drawn from 12 × 12
  pairs, an arbitrary 3-letter value; the completion is ``' ' + value + EOS`` as LocFT writes it — the
  character tokenizer has no space, so the separator is ``<unk>``), each key in three surface forms
  (separators ``-``, ``;``, ``,``), mixed with 2,000 replayed pre-training examples (1,200 steps × 32,
  lr 1e-3, cosine). Cached next to the pre-trained model (deterministic).
* **Edits** (per seed): 32 keys the fact model knows in all three forms (at most 2/3 of those it knows)
  get a new random value.
  Training sees only the ``-`` form (``prompt`` → ``target``); ``paraphrase_prompts`` are the ``;`` and
  ``,`` forms of the same key (never trained with the new value); ``neighbourhood_prompts`` are three
  known, unedited keys per edit (one sharing its first pair, one its second pair, one random) with
  their old values. Scores (teacher-forced exact match of the value tokens): edit success,
  paraphrase success, neighbourhood preservation (all three neighbours; "near": the two sharing a
  pair); plus retention = mean greedy exact match on 60
  held-out prompts of each pre-training task (copy, reverse, count, add, column addition), forgetting
  = the fact model's retention minus the row's.
* **Rows**, every one from the same fact model on the same 32 edits, lr 5e-4 (the paper's), constant
  schedule, minibatches of 8 edits, at most 100 updates (25 epochs × 4 minibatches: the paper's epoch
  cap): ``locft`` = ``compose(SFTTrainer, ["locft"])`` on ``model.layers.1.mlp.down_proj`` (the
  module at 2/3 depth, rounded, of the 3-layer decoder: the paper's Llama-3 choice is layer 22 of 32),
  its defaults otherwise (per-sample target-only loss, skip a minibatch below 1e-2, stop at the end
  of an epoch below 1e-2); ``locft-layer0`` / ``locft-layer2`` the same on the first / last layer's
  down-projection; ``full-bf`` the same locft recipe on every parameter (``locft_modules=model,lm_head``:
  isolates the localisation); ``full`` plain full fine-tuning (``compose(SFTTrainer, [])``, TRL's
  token-averaged completion-only loss, all 100 updates, no early stop) on the same prompt/completion
  rows. ``locft-750u`` / ``full-750u``: ``locft`` / ``full`` with at most 750 updates, the paper's
  update count (25 epochs × 30 minibatches of its 3k edits); added after the first run, where
  ``locft`` was still far from its stopping loss after 100 updates (the claim is checked on the
  100-update rows; the 750-update ones are shown next to it).
"""

from __future__ import annotations

import random
import string
from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.evaluate import task_accuracies
from benchmarks.quality.scenarios._common import (Context, cached_build, final_loss, load, sft, summarize_rows,
                                                  with_replay)

NAME = "editing"
TITLE = "Model editing: LocFT-BF (one mid-depth MLP module) vs full fine-tuning on counterfactual edits of toy facts"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = ("edit_success", "paraphrase_success", "neighbourhood_preservation", "retention")

TAG = "f"
# The reference's ' ' before every value, which this character tokenizer encodes as <unk> (the committed results
# were made so, and the fact model is cached with it); locft's default ('auto') now drops it for such tokenizers.
SEPARATOR = "space"
FORMS = ("-", ";", ",")  # FORMS[0] is the edited (trained) surface form, the others are paraphrases
PAIR_LETTERS = string.ascii_lowercase

FULL = {"pairs": 12, "keys": 96, "value_len": 3, "form_copies": 7, "replay": 2_000, "build_steps": 1_200,
        "build_batch": 32, "build_lr": 1e-3, "edits": 32, "neighbours": 3, "batch": 8, "epochs": 25, "lr": 5e-4,
        "eval_retention": 60, "max_new_tokens": None, "long_updates": 750}
SMOKE = {"pairs": 4, "keys": 12, "value_len": 3, "form_copies": 1, "replay": 16, "build_steps": 2, "build_batch": 8,
         "build_lr": 1e-3, "edits": 3, "neighbours": 3, "batch": 2, "epochs": 1, "lr": 5e-4, "eval_retention": 3,
         "max_new_tokens": 4, "long_updates": 4}


def prompt_of(key: tuple[str, str], form: str) -> str:
    return f"{TAG}:{key[0]}{form}{key[1]}="


def fact_store(cfg: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``keys`` distinct (first pair, second pair) keys over ``pairs`` × ``pairs`` letter pairs -> a random value."""
    rng = random.Random("editing-facts")
    firsts, seconds = set(), set()
    while len(firsts) < cfg["pairs"]:
        firsts.add("".join(rng.choice(PAIR_LETTERS) for _ in range(2)))
    while len(seconds) < cfg["pairs"]:
        seconds.add("".join(rng.choice(PAIR_LETTERS) for _ in range(2)))
    grid = [(a, b) for a in sorted(firsts) for b in sorted(seconds)]
    keys = rng.sample(grid, cfg["keys"])
    return {k: "".join(rng.choice(PAIR_LETTERS) for _ in range(cfg["value_len"])) for k in keys}


def fact_model(ctx: Context, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fact model's folder (built now unless cached) and its build record (facts, which ones it knows)."""
    from ftplugins.methods.locft.data import completion_of, exact_match

    recipe = {k: cfg[k] for k in ("pairs", "keys", "value_len", "form_copies", "replay", "build_steps",
                                  "build_batch", "build_lr")}
    recipe.update(pretrained=ctx.key, tag=TAG, forms=list(FORMS), format=1)

    def build(folder: str) -> dict[str, Any]:
        ctx.log(f"editing: building the fact model ({cfg['build_steps']} steps) ...")
        store = fact_store(cfg)
        model, tokenizer = load(ctx.folder)
        facts = [{"prompt": prompt_of(k, form), "completion": completion_of(v, None)}
                 for k, v in store.items() for form in FORMS] * cfg["form_copies"]
        replay = [r["prompt"] for r in tasks.examples(list(ctx.pretrain.tasks), cfg["replay"], seed=16)]
        rows = with_replay(ctx, facts, cfg["replay"], seed=16)
        trainer = sft(model, tokenizer, rows, steps=cfg["build_steps"], lr=cfg["build_lr"], seed=0,
                      batch_size=cfg["build_batch"])
        built = trainer.model.eval()
        known = {f"{a}|{b}": [exact_match(built, tokenizer, prompt_of((a, b), form), v) for form in FORMS]
                 for (a, b), v in store.items()}
        built.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        n_all = sum(all(v) for v in known.values())
        ctx.log(f"editing: fact model built in {trainer.train_seconds:.0f} s; knows {n_all}/{len(known)} keys in all "
                "forms")
        return {"seconds": trainer.train_seconds, "final_loss": final_loss(trainer),
                "facts": {f"{a}|{b}": v for (a, b), v in store.items()}, "known": known,
                "replay_prompts": sorted(set(replay))}

    return cached_build(ctx, "facts", recipe, build)


def edit_rows(record: dict[str, Any], cfg: dict[str, Any], seed: int) -> tuple[list[dict[str, Any]], bool]:
    """The seed's editing dataset (the plugin's format) and whether it was drawn from fully known keys only."""
    facts = {tuple(k.split("|")): v for k, v in record["facts"].items()}
    known = [k for k in facts if all(record["known"]["|".join(k)])]
    from_known = len(known) >= 8
    pool = sorted(known if from_known else facts)  # smoke: the fact model knows nothing; use every key
    rng = random.Random(f"edits:{seed}")
    # at most 2/3 of the pool is edited, so that every edit has unedited neighbours to draw from
    edited = rng.sample(pool, min(cfg["edits"], len(pool) * 2 // 3))
    rest = [k for k in pool if k not in set(edited)]
    rows = []
    for key in edited:
        old = facts[key]
        new = old
        while new == old:
            new = "".join(rng.choice(PAIR_LETTERS) for _ in range(cfg["value_len"]))
        near = [[k for k in rest if k[0] == key[0]], [k for k in rest if k[1] == key[1]], rest]
        neighbours: list[tuple[str, str]] = []
        for group in near[: cfg["neighbours"]]:
            choices = [k for k in group if k not in neighbours] or [k for k in rest if k not in neighbours]
            neighbours.append(rng.choice(choices))
        rows.append({"prompt": prompt_of(key, FORMS[0]), "target": new, "old_target": old,
                     "paraphrase_prompts": [prompt_of(key, form) for form in FORMS[1:]],
                     "neighbourhood_prompts": [prompt_of(k, FORMS[0]) for k in neighbours],
                     "neighbourhood_targets": [facts[k] for k in neighbours]})
    return rows, from_known


def retention(model, tokenizer, names: list[str], cfg: dict[str, Any], exclude: set[str]) -> dict[str, Any]:
    per_task = task_accuracies(model, tokenizer, names, cfg["eval_retention"], seed=0, exclude=exclude,
                               max_new_tokens=cfg["max_new_tokens"])
    return {"retention": sum(per_task.values()) / len(per_task), "retention_per_task": per_task}


def layer_module(index: int) -> str:
    return f"model.layers.{index}.mlp.down_proj"


ALL_MODULES = "model,lm_head"


def mid_layer(layers: int) -> int:
    """2/3 depth: 3 layers -> 1, 6 -> 3 (the paper: layer 22 of Llama-3-8B's 32)."""
    return round(2 * (layers - 1) / 3)


def default_variants(layers: int, smoke: bool) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """This scenario's rows: row -> ``locft_modules`` (None: plain full fine-tuning without the plugin), and which of
    them run the paper's update count instead of the epoch cap."""
    mid = mid_layer(layers)
    variants: dict[str, str | None] = {"locft": layer_module(mid)}
    if not smoke:
        for index, name in ((0, "locft-layer0"), (layers - 1, "locft-layer2" if layers == 3 else "locft-last")):
            if index != mid:
                variants[name] = layer_module(index)
        variants["full-bf"] = ALL_MODULES
    variants["full"] = None
    # the paper's number of updates (25 epochs x 30 minibatches of its 3k edits), not its epoch count
    long_rows = {"locft-750u": layer_module(mid), "full-750u": None} if not smoke else {}
    variants.update(long_rows)
    return variants, long_rows


def edit(folder: str, tokenizer, rows: list[dict[str, Any]], modules: str | None, cfg: dict[str, Any], *,
         steps: int, seed: int):
    """The fact model in ``folder`` edited on ``rows``: LocFT-BF on ``modules``, or plain full fine-tuning when
    ``modules`` is None; returns the trainer and LocFT's monitor (None for plain fine-tuning)."""
    from ftplugins.methods.locft.data import completion_of

    model, _ = load(folder)
    if modules is None:
        data = [{"prompt": r["prompt"], "completion": completion_of(r["target"], None)} for r in rows]
        return sft(model, tokenizer, data, steps=steps, lr=cfg["lr"], seed=seed, batch_size=cfg["batch"],
                   schedule="constant"), None
    trainer = sft(model, tokenizer, rows, steps=steps, lr=cfg["lr"], seed=seed, batch_size=cfg["batch"],
                  schedule="constant", plugins=("locft",),
                  options={"locft_modules": modules, "locft_batch_size": cfg["batch"], "locft_separator": SEPARATOR})
    return trainer, trainer.ftplugins_run.state["locft"]["monitor"]


def run(ctx: Context) -> dict[str, Any]:
    return run_with(ctx, SMOKE if ctx.smoke else FULL, default_variants)


def run_with(ctx: Context, cfg: dict[str, Any], choose_variants) -> dict[str, Any]:
    """The scenario on the rows ``choose_variants(layers, smoke)`` returns (see :func:`default_variants`)."""
    from ftplugins.methods.locft import evaluate_edits

    folder, record = fact_model(ctx, cfg)
    fact, tokenizer = load(folder)
    layers = fact.config.num_hidden_layers
    mid = mid_layer(layers)
    all_modules = ALL_MODULES
    variants, long_rows = choose_variants(layers, ctx.smoke)

    names = list(ctx.pretrain.tasks)
    exclude = ({r["prompt"] for r in tasks.examples(names, ctx.pretrain.examples, ctx.pretrain.seed)}
               | set(record["replay_prompts"]))
    before = retention(fact, tokenizer, names, cfg, exclude)
    steps_per_epoch = max(1, -(-cfg["edits"] // cfg["batch"]))

    per_seed: dict[str, list[dict[str, Any]]] = {}
    drawn_from_known = True
    for seed in ctx.seeds:
        rows, from_known = edit_rows(record, cfg, seed)
        drawn_from_known &= from_known
        epoch_steps = cfg["epochs"] * max(1, -(-len(rows) // cfg["batch"]))
        pre = {**evaluate_edits(fact, tokenizer, rows, separator=SEPARATOR), **_neighbour_split(fact, tokenizer, rows), **before,
               "forgetting": 0.0, "seed": seed,
               "old_value_paraphrase": _old_rate(fact, tokenizer, rows), "edits": len(rows)}
        per_seed.setdefault("pre-edit", []).append(pre)
        ctx.log(f"  seed {seed} pre-edit      " + _line(pre))
        for name, modules in variants.items():
            steps = cfg["long_updates"] if name in long_rows else epoch_steps
            trainer, monitor = edit(folder, tokenizer, rows, modules, cfg, steps=steps, seed=seed)
            edited = trainer.model.eval()
            changed = _changed_params(fact, edited)
            result = {**evaluate_edits(edited, tokenizer, rows, separator=SEPARATOR), **_neighbour_split(edited, tokenizer, rows),
                      **retention(edited, tokenizer, names, cfg, exclude),
                      "old_value_paraphrase": _old_rate(edited, tokenizer, rows), "seed": seed, "edits": len(rows),
                      "updates": trainer.state.global_step, "max_updates": steps,
                      "skipped_updates": monitor.skipped if monitor else 0,
                      "epoch_losses": monitor.epoch_losses if monitor else None,
                      "final_loss": final_loss(trainer), "changed_params": changed,
                      "train_seconds": trainer.train_seconds}
            result["forgetting"] = before["retention"] - result["retention"]
            per_seed.setdefault(name, []).append(result)
            ctx.log(f"  seed {seed} {name:<13} " + _line(result)
                    + f"  ({result['updates']}/{steps} updates, {changed:,} params changed, "
                      f"{result['train_seconds']:.0f} s)")

    notes = {"pre-edit": "the fact model before editing (old values)",
             "full": "plain full fine-tuning (TRL SFT, token-averaged loss, all updates) on the same edit rows",
             "full-750u": "plain full fine-tuning, 750 updates (the paper's update count)",
             "full-bf": "the locft recipe (breadth-first, per-sample target-only loss, skip/stop) on every parameter"}
    for name, modules in variants.items():
        if modules not in (None, all_modules):
            notes[name] = f"locft on {modules}" + (", at most 750 updates (the paper's update count)"
                                                   if name in long_rows else "")
    metrics = ["edit_success", "paraphrase_success", "neighbourhood_preservation", "retention", "forgetting"]
    return {
        "rows": summarize_rows(per_seed, [*metrics, "neighbourhood_near", "neighbourhood_random", "old_value_paraphrase",
                                          "updates", "changed_params"], notes),
        "metrics": [["edit_success", "edit success"], ["paraphrase_success", "paraphrase success"],
                    ["neighbourhood_preservation", "neighbourhood kept"],
                    ["neighbourhood_near", "near neighbours kept"], ["retention", "retention"],
                    ["forgetting", "forgetting"], ["updates", "updates"]],
        "config": {**cfg, "forms": list(FORMS), "tag": TAG, "mid_layer": mid, "steps_per_epoch": steps_per_epoch,
                   "modules": variants},
        "extra": {"fact_model": {"folder": folder, "key": record["key"], "build_seconds": record["seconds"],
                                 "build_threads": record.get("torch_threads"),
                                 "final_loss": record["final_loss"],
                                 "known_all_forms": sum(all(v) for v in record["known"].values()),
                                 "known_edit_form": sum(v[0] for v in record["known"].values()),
                                 "facts": len(record["facts"]), "edits_from_known_keys": drawn_from_known}},
    }


def _neighbour_split(model, tokenizer, rows) -> dict[str, float]:
    """Neighbourhood preservation on the keys sharing a letter pair with the edit (near) vs the random one."""
    from ftplugins.methods.locft import evaluate_edits

    out = {}
    for name, picks in (("neighbourhood_near", slice(0, 2)), ("neighbourhood_random", slice(2, None))):
        subset = [{"prompt": r["prompt"], "target": r["target"],
                   "neighbourhood_prompts": r["neighbourhood_prompts"][picks],
                   "neighbourhood_targets": r["neighbourhood_targets"][picks]} for r in rows]
        value = evaluate_edits(model, tokenizer, subset, separator=SEPARATOR)["neighbourhood_preservation"]
        if value is not None:
            out[name] = value
    return out


def _old_rate(model, tokenizer, rows) -> float:
    """Share of paraphrase prompts still answered with the OLD value (teacher-forced exact match)."""
    from ftplugins.methods.locft.data import exact_match

    hits = [exact_match(model, tokenizer, p, r["old_target"]) for r in rows for p in r["paraphrase_prompts"]]
    return sum(hits) / max(1, len(hits))


def _changed_params(before, after) -> int:
    ref = dict(before.named_parameters())
    return int(sum(int((p.detach() != ref[n].detach()).sum()) for n, p in after.named_parameters()))


def _line(result: dict[str, Any]) -> str:
    return (f"edit {result['edit_success']:.3f}  paraphrase {result['paraphrase_success']:.3f}  "
            f"neighbours {result['neighbourhood_preservation']:.3f}  retention {result['retention']:.3f}")
