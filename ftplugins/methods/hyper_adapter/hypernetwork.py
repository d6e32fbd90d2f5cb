"""The hypernetwork: one shared network emits every adapter's weights from (task, layer, position) embeddings.

As spec C §7 reads FM3 (HyperFormer, Karimi Mahabadi et al., ACL 2021): adapter (t, ℓ, p) has a source vector s
made from a task, a layer and a position embedding; linear generators map s to the adapter's down projection D
(b×d_in), its bias d, the up projection U (d_out×b) and its bias u. Adapters of the same shape share one generator,
so the parameter count does not grow with depth or with the number of tasks (only the task embeddings do). The up
generators start at zero: every generated adapter is then the identity (f = 0) and the model starts at the
pre-trained one, as our ``bottleneck`` adapters do. Not generated: HyperFormer's LayerNorm γ/β (our bottleneck
adapter has no LayerNorm). Two ways to make s (``sources``):

* ``"product"`` (the ``orthogonal`` parametrization, the default): s = unit(e_task ⊙ e_layer ⊙ e_pos). Products
  of independent embeddings are far less aligned across (task, layer, position) than a shared projector's outputs
  (mean |cos| 0.16 at width 64 vs 0.55), so a generator step along one adapter's source moves another's little.
  The generators have no bias (no offset shared by every adapter) and D's generator is Kaiming-sized, so every
  adapter's D starts where its own fixed adapter's would. Trained with
  per-adapter steps (:mod:`.optimizer`); measured in ``quality-small-fm3-optimizer``: under plain Adam a generator
  coordinate mixes every adapter and the step is sized by the others'.
* ``"mlp"`` (the ``hyperformer`` parametrization): s = P([e_task; e_layer; e_pos]) with P a 2-layer ReLU MLP, and
  generators with biases (D's bias is a Kaiming-initialised adapter shared by every site, varied a little by s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = ("down", "down_bias", "up", "up_bias")
#: How each adapter's source vector is made: see the module docstring.
SOURCES = ("product", "mlp")


@dataclass(frozen=True)
class AdapterSite:
    """One generated adapter: the module it wraps, its (layer, position) ids and its shape."""

    module: str
    layer: int
    position: int
    in_features: int
    width: int
    out_features: int

    @property
    def shape_key(self) -> str:
        return f"{self.in_features}x{self.width}x{self.out_features}"


class WeightGenerator(nn.Module):
    """Linear maps from a source vector to one adapter shape's four tensors."""

    def __init__(self, source_dim: int, in_features: int, width: int, out_features: int, shared_bias: bool = True):
        super().__init__()
        self.shapes = {"down": (width, in_features), "down_bias": (width,), "up": (out_features, width),
                       "up_bias": (out_features,)}
        self.heads = nn.ModuleDict({name: nn.Linear(source_dim, math.prod(shape), bias=shared_bias) for name, shape
                                    in self.shapes.items()})
        with torch.no_grad():
            for name in ("up", "up_bias"):  # U = 0, u = 0: every adapter starts as the identity
                nn.init.zeros_(self.heads[name].weight)
            if not shared_bias:  # unit sources: D and d of each adapter start Kaiming-sized, each its own
                for name in ("down", "down_bias"):  # the std of a fresh Linear's uniform(±1/sqrt(fan_in))
                    nn.init.normal_(self.heads[name].weight, std=1 / math.sqrt(3 * in_features))
                return
            # D starts near the Kaiming-uniform init of a fixed adapter (the generator's bias), varied by s.
            down = torch.empty(width, in_features)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            self.heads["down"].bias.copy_(down.flatten())
            nn.init.normal_(self.heads["down"].weight, std=1e-2 / math.sqrt(source_dim))
            for name in ("down_bias", "up", "up_bias"):
                nn.init.zeros_(self.heads[name].bias)

    def forward(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        """``source`` (n, source_dim) -> name -> (n, *shape)."""
        return {name: head(source).view(source.shape[0], *self.shapes[name]) for name, head in self.heads.items()}


class AdapterHypernetwork(nn.Module):
    def __init__(self, num_tasks: int, sites: list[AdapterSite], embedding_dim: int, hidden_dim: int,
                 sources: str = "product"):
        super().__init__()
        if sources not in SOURCES:
            raise ValueError(f"sources {sources!r}: expected one of {SOURCES}")
        self.sites, self.sources = list(sites), sources
        self.task_embedding = nn.Embedding(num_tasks, embedding_dim)
        self.layer_embedding = nn.Embedding(1 + max(s.layer for s in sites), embedding_dim)
        self.position_embedding = nn.Embedding(1 + max(s.position for s in sites), embedding_dim)
        source_dim = embedding_dim
        if sources == "mlp":
            self.projector = nn.Sequential(nn.Linear(3 * embedding_dim, hidden_dim), nn.ReLU(),
                                           nn.Linear(hidden_dim, hidden_dim))
            source_dim = hidden_dim
        self.generators = nn.ModuleDict()
        for site in sites:
            if site.shape_key not in self.generators:
                self.generators[site.shape_key] = WeightGenerator(source_dim, site.in_features, site.width,
                                                                  site.out_features, shared_bias=sources == "mlp")
        self.register_buffer("layer_ids", torch.tensor([s.layer for s in sites]), persistent=False)
        self.register_buffer("position_ids", torch.tensor([s.position for s in sites]), persistent=False)

    def forward(self, task: int) -> dict[str, dict[str, torch.Tensor]]:
        """Every adapter of ``task``: module name -> {down, down_bias, up, up_bias}. A pure function of the
        hypernetwork's parameters and ``task``: the same task always gets the same weights."""
        return self.generate(self.source(task))

    def source(self, task: int) -> torch.Tensor:
        """The source vector of each of ``task``'s adapters, (sites, source width), in the order of ``self.sites``."""
        count = len(self.sites)
        task_ids = torch.full((count,), int(task), dtype=torch.long, device=self.layer_ids.device)
        parts = (self.task_embedding(task_ids), self.layer_embedding(self.layer_ids),
                 self.position_embedding(self.position_ids))
        if self.sources == "mlp":
            return self.projector(torch.cat(parts, -1))
        return F.normalize(parts[0] * parts[1] * parts[2], dim=-1)

    def generate(self, source: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Each site's four tensors from its row of ``source``, by the generator of the site's shape."""
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for key, generator in self.generators.items():
            rows = [i for i, site in enumerate(self.sites) if site.shape_key == key]
            generated = generator(source[rows])
            for j, i in enumerate(rows):
                weights[self.sites[i].module] = {name: generated[name][j] for name in WEIGHTS}
        return weights
