"""Self-generated targets, diagnosed: S3FT vs SFT on a task the starting model only partly solves.

``self-generated`` could not judge S3FT's claim on either decoder: SFT on the gold style fell below the model it
started from (``mid``: the pre-trained decoder already writes every ``s:`` sum right, 1.000, and SFT on the other
style drops it to 0.592; ``small``: 0.585 → 0.000), so nothing was left for S3FT to match. The paper starts from a
model that partly solves the task and gains from SFT. Here:

* **Starting model** (the ``pretrained`` row: the model before this fine-tuning): the cached pre-trained decoder after
  a short SFT on the target task in its own style (``chain_steps``, ``3+4+2+8`` → ``3+4=7,7+2=9,9+8=17>17``; 256
  examples, 80 steps × 16, lr 3e-4, cosine), which leaves it partly right (a pilot: 0.31 after 60 steps, 0.64 after
  100). Built once and cached.
* **Gold answers** carry the same steps in another punctuation: ``;`` between steps and ``;=`` before the total
  (``3+4=7;7+2=9;9+8=17;=17``), an easier change of style than ``self-generated``'s (no swapped operands), so SFT
  on gold can learn it within the budget.
* **Rows, judge, paraphrase and scores** as in ``self-generated``: 256 new training prompts per seed, full
  fine-tuning, 150 steps × 16; ``s3ft`` keeps the starting model's own answer where its final number is
  right (``numeric``), else its copy-task "paraphrase", else gold. Target accuracy on 200 held-out prompts (none in
  the starting model's or any seed's training set); retention on every pre-training task; forgetting = the starting
  model's retention minus the row's. Its own claim variant, judged like ``self-generated``'s (void if SFT ends below
  the starting model on the target).
* **Learning rates** (the paper's claim is about target accuracy *and* forgetting, which a learning rate trades):
  each row at 1e-4, 3e-4 and 1e-3, every seed at each, its rate chosen on 100 validation prompts (disjoint from the
  test and training prompts; the best mean target accuracy over the seeds, a tie to the lower rate). The claim then
  compares the rows' retention at matched target accuracy: the highest accuracy both reach along their rates,
  interpolated between rates (``claims.forgets_less``). History: the first run (``quality-mid-self-generated-
  partial``) trained both rows at 3e-4 only: SFT 0.970, S3FT 0.807, forgetting 0.047 vs 0.020.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality import tasks
from benchmarks.quality.scenarios import self_generated
from benchmarks.quality.scenarios._common import Context, cached_build, final_loss, load, sft

NAME = "self-generated-partial"
TITLE = "S3FT vs SFT on gold answers in another punctuation, from a model that partly solves the task"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = self_generated.PLOT_METRICS

TASK = "chain_steps"
START = {"examples": 256, "steps": 80, "batch": 16, "lr": 3e-4, "seed": 900}
START_SMOKE = {"examples": 8, "steps": 2, "batch": 4, "lr": 3e-4, "seed": 900}
LRS, LRS_SMOKE = (1e-4, 3e-4, 1e-3), (3e-4, 1e-3)


def gold_style(completion: str) -> str:
    """``3+4=7,7+2=9,9+8=17>17`` -> ``3+4=7;7+2=9;9+8=17;=17`` (the same steps in another punctuation)."""
    steps, total = completion.split(">")
    return steps.replace(",", ";") + ";=" + total


def start_model(ctx: Context, recipe: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The starting model's folder (built now unless cached) and its record (the prompts it was trained on)."""
    rows = tasks.examples([TASK], recipe["examples"], seed=recipe["seed"])

    def build(folder: str) -> dict[str, Any]:
        ctx.log(f"self-generated-partial: building the starting model ({recipe['steps']} steps on {TASK}) ...")
        model, tokenizer = load(ctx.folder)
        trainer = sft(model, tokenizer, [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows],
                      steps=recipe["steps"], lr=recipe["lr"], seed=0, batch_size=recipe["batch"])
        trainer.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {"seconds": trainer.train_seconds, "final_loss": final_loss(trainer)}

    folder, record = cached_build(ctx, "s3ft-start", {**recipe, "pretrained": ctx.key, "task": TASK, "format": 1},
                                  build)
    return folder, {**record, "prompts": frozenset(r["prompt"] for r in rows)}


def run(ctx: Context) -> dict[str, Any]:
    recipe = START_SMOKE if ctx.smoke else START
    folder, record = start_model(ctx, recipe)
    result = self_generated.run_with(
        ctx, self_generated.SMOKE if ctx.smoke else self_generated.FULL, task=TASK, style=gold_style, start=folder,
        start_note=f"the starting model: the pre-trained decoder after {recipe['steps']} steps of SFT on {TASK} in "
                   "its own style", start_prompts=record["prompts"], lrs=LRS_SMOKE if ctx.smoke else LRS)
    result["config"]["start"] = recipe
    result["extra"]["start_model"] = {"seconds": record["seconds"], "final_loss": record["final_loss"],
                                      "build_threads": record.get("torch_threads")}
    return result
