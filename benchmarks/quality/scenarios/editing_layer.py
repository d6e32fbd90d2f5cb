"""Editing, diagnosed: LocFT-BF on the whole mid-depth layer (the paper's Mistral-7B choice) at 750 updates.

At the paper's update count on ``mid``, LocFT-BF on the mid-depth ``mlp.down_proj`` (``editing``'s ``locft-750u``)
made every edit succeed and kept far more of the neighbourhood (0.826 vs 0.031) and of the pre-training tasks than
full fine-tuning, but carried the edits to the keys' other surface forms less often (paraphrase success 0.911 vs
1.000): one 512×256 projection stores the new value for the trained form more than for the key. The paper locates a
different module per model (Qwen2.5-7B: ``layers.6.mlp.down_proj``; Llama-3-8B: ``layers.22.mlp.down_proj``;
Mistral-7B: all of layer 23). This scenario repeats ``editing`` (the same fact model, edits, scores and budget: at
most 750 updates, lr 5e-4, minibatches of 8 edits; the paper's Mistral rate, 5e-5, is for a 7B model's layer and is
not used, so that every row keeps the scenario's one rate) with LocFT-BF on the whole mid-depth layer
(``model.layers.3``: attention and MLP), beside ``locft-750u`` and ``full-750u`` again in the same run;
``locft-layer`` is the whole layer at the 25-epoch cap (100 updates, context). Its own claim variant, judged like
``editing``'s.
"""

from __future__ import annotations

from typing import Any

from benchmarks.quality.scenarios import editing
from benchmarks.quality.scenarios._common import Context

NAME = "editing-layer"
TITLE = "Model editing: LocFT-BF on the whole mid-depth layer vs its down-projection vs full fine-tuning, 750 updates"
DESIGN = __doc__.split("\n\n", 1)[1].strip()
PLOT_METRICS = editing.PLOT_METRICS


def layer_variants(layers: int, smoke: bool) -> tuple[dict[str, str | None], dict[str, str | None]]:
    mid = editing.mid_layer(layers)
    long_rows = {"locft-layer-750u": f"model.layers.{mid}", "locft-750u": editing.layer_module(mid),
                 "full-750u": None}
    return {"locft-layer": f"model.layers.{mid}", **long_rows}, long_rows


def run(ctx: Context) -> dict[str, Any]:
    return editing.run_with(ctx, editing.SMOKE if ctx.smoke else editing.FULL, layer_variants)
