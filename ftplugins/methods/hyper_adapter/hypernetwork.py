"""The hypernetwork: one shared network emits every adapter's weights from (task, layer, position) embeddings.

HyperFormer-style (Karimi Mahabadi et al., ACL 2021), as spec C §7 reads FM3: the source vector of adapter
(t, ℓ, p) is s = P([e_task(t); e_layer(ℓ); e_pos(p)]) with P a 2-layer ReLU MLP; linear generators map s to the
adapter's down projection D (b×d_in), its bias d, the up projection U (d_out×b) and its bias u. Adapters of the same
shape share one generator, so the parameter count does not grow with depth or with the number of tasks (only the
task embeddings do). The up generators start at zero: every generated adapter is then the identity (f = 0) and the
model starts at the pre-trained one, as our ``bottleneck`` adapters do. Not generated: HyperFormer's LayerNorm γ/β
(our bottleneck adapter has no LayerNorm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

WEIGHTS = ("down", "down_bias", "up", "up_bias")


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

    def __init__(self, source_dim: int, in_features: int, width: int, out_features: int):
        super().__init__()
        self.shapes = {"down": (width, in_features), "down_bias": (width,), "up": (out_features, width),
                       "up_bias": (out_features,)}
        self.heads = nn.ModuleDict({name: nn.Linear(source_dim, math.prod(shape)) for name, shape in
                                    self.shapes.items()})
        with torch.no_grad():
            # D starts near the Kaiming-uniform init of a fixed adapter (the generator's bias), varied by s.
            down = torch.empty(width, in_features)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            self.heads["down"].bias.copy_(down.flatten())
            nn.init.normal_(self.heads["down"].weight, std=1e-2 / math.sqrt(source_dim))
            nn.init.zeros_(self.heads["down_bias"].bias)
            for name in ("up", "up_bias"):  # U = 0, u = 0: every adapter starts as the identity
                nn.init.zeros_(self.heads[name].weight)
                nn.init.zeros_(self.heads[name].bias)

    def forward(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        """``source`` (n, source_dim) -> name -> (n, *shape)."""
        return {name: head(source).view(source.shape[0], *self.shapes[name]) for name, head in self.heads.items()}


class AdapterHypernetwork(nn.Module):
    def __init__(self, num_tasks: int, sites: list[AdapterSite], embedding_dim: int, hidden_dim: int):
        super().__init__()
        self.sites = list(sites)
        self.task_embedding = nn.Embedding(num_tasks, embedding_dim)
        self.layer_embedding = nn.Embedding(1 + max(s.layer for s in sites), embedding_dim)
        self.position_embedding = nn.Embedding(1 + max(s.position for s in sites), embedding_dim)
        self.projector = nn.Sequential(nn.Linear(3 * embedding_dim, hidden_dim), nn.ReLU(),
                                       nn.Linear(hidden_dim, hidden_dim))
        self.generators = nn.ModuleDict()
        for site in sites:
            if site.shape_key not in self.generators:
                self.generators[site.shape_key] = WeightGenerator(hidden_dim, site.in_features, site.width,
                                                                  site.out_features)
        self.register_buffer("layer_ids", torch.tensor([s.layer for s in sites]), persistent=False)
        self.register_buffer("position_ids", torch.tensor([s.position for s in sites]), persistent=False)

    def forward(self, task: int) -> dict[str, dict[str, torch.Tensor]]:
        """Every adapter of ``task``: module name -> {down, down_bias, up, up_bias}. A pure function of the
        hypernetwork's parameters and ``task``: the same task always gets the same weights."""
        return self.generate(self.source(task))

    def source(self, task: int) -> torch.Tensor:
        """The source vector of each of ``task``'s adapters, (sites, hidden_dim), in the order of ``self.sites``."""
        count = len(self.sites)
        task_ids = torch.full((count,), int(task), dtype=torch.long, device=self.layer_ids.device)
        return self.projector(torch.cat([self.task_embedding(task_ids), self.layer_embedding(self.layer_ids),
                                         self.position_embedding(self.position_ids)], -1))

    def generate(self, source: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Each site's four tensors from its row of ``source``, by the generator of the site's shape."""
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for key, generator in self.generators.items():
            rows = [i for i, site in enumerate(self.sites) if site.shape_key == key]
            generated = generator(source[rows])
            for j, i in enumerate(rows):
                weights[self.sites[i].module] = {name: generated[name][j] for name in WEIGHTS}
        return weights
