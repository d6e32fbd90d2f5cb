"""Per-row gradient features: the gradient of each row's loss w.r.t. a small parameter set (a LoRA's, or the last
block's: :func:`ftplugins.data.influence.select_parameters`), projected to a fixed dimension.

The projection is a CountSketch (each gradient entry is added, with a seeded random sign, into one of ``dim``
seeded random buckets): inner products are preserved in expectation like a Gaussian JL projection, but it costs
one pass over the gradient and no ``P x dim`` matrix, so the features' memory is ``rows x dim`` whatever the model
size. GOT-D's and DEALRec's gradient features use it through ``encoder="gradients"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .influence import flat, grads_only_for, row_losses, select_parameters
from .tokens import batch_rows


class GradientEncoder:
    """Rows -> CountSketch of ``grad l(row)`` w.r.t. the chosen parameters of ``model`` (``dim`` floats)."""

    pooling = "gradient-countsketch"

    def __init__(self, model: Any, tokenizer: Any, columns: list[str], dim: int = 8192, params: str = "auto",
                 seed: int = 0, max_length: int = 256):
        self.model, self.tokenizer, self.columns, self.max_length = model, tokenizer, columns, max_length
        self.dim, self.params_pattern, self.seed = dim, params, seed
        self.params = [p for _, p in select_parameters(model, params)]
        self._sketch = None

    def fingerprint(self) -> str:
        from .fingerprint import model_fingerprint

        return f"grad:{model_fingerprint(self.model)}:{self.params_pattern}:{self.dim}:{self.seed}"

    def sketch(self):
        """(bucket, sign) per gradient entry, drawn once from the seed."""
        import torch

        if self._sketch is None:
            size = sum(p.numel() for p in self.params)
            generator = torch.Generator().manual_seed(self.seed)
            bucket = torch.randint(0, self.dim, (size,), generator=generator)
            sign = torch.randint(0, 2, (size,), generator=generator).float().mul_(2).sub_(1)
            device = self.params[0].device
            self._sketch = bucket.to(device), sign.to(device)
        return self._sketch

    def project(self, gradient):
        import torch

        bucket, sign = self.sketch()
        return torch.zeros(self.dim, dtype=torch.float32, device=gradient.device).index_add_(
            0, bucket, gradient.float() * sign)

    def encode(self, batch: dict[str, list]) -> np.ndarray:
        import torch

        out = []
        with grads_only_for(self.model, self.params):
            for row in batch_rows(batch):
                loss = row_losses(self.model, self.tokenizer, [row], self.max_length).sum()
                out.append(self.project(flat(torch.autograd.grad(loss, self.params))).cpu().numpy())
        return np.stack(out)
