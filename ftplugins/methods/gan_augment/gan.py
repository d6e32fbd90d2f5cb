"""A class-conditional GAN for small tabular data with an ensemble of discriminators, and MH sampling from it.

MhERGAN's abstract names an ensemble of discriminators, MCMC sampling, an "MHLoss" and a "reparameterized GAN
ensemble"; the details are not public. Choices made here, in the spirit of MH-GAN (Turner et al., 2019):

* Generator G(z, y) and each discriminator D_k(x, y): two-hidden-layer MLPs (LeakyReLU), the class as a one-hot
  input. Features are standardised on the real rows and mapped back after sampling.
* The ensemble: K discriminators, each with its own initialisation and its own bootstrap of the real rows every
  step; the ensemble's score is the mean of their logits. Every D_k is trained by binary cross-entropy; G by the
  non-saturating loss on the ensemble's mean logit (our reading of "MHLoss": G is trained against the very score
  the MH sampler uses).
* Calibration (MH-GAN needs a calibrated D): Platt scaling a * logit + b, fitted by logistic regression on the real
  rows against as many fresh generator samples. MH-GAN calibrates on held-out real data; few-shot data has none to
  spare, so the training rows are used (stated in the report).
* Sampling: per synthetic row one chain of ``chain_length`` generator proposals starting at a real row of its class
  (MH-GAN's initialisation: no burn-in); a chain that never leaves its real start is run again from a generator
  sample, so every synthetic row is generated, never a copy of a real row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .mh import run_chains


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, n_out))


@dataclass
class TabularGan:
    """A trained conditional GAN over standardised features (``fit`` builds it)."""

    generator: nn.Module
    discriminators: list[nn.Module]
    mean: torch.Tensor
    std: torch.Tensor
    n_classes: int
    noise_dim: int
    calibration: tuple[float, float] = (1.0, 0.0)

    def generate(self, labels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Standardised samples, one per label."""
        z = torch.randn(len(labels), self.noise_dim, generator=rng)
        with torch.no_grad():
            return self.generator(torch.cat([z, self._onehot(labels)], dim=1))

    def ensemble_logit(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x, self._onehot(labels)], dim=1)
        return torch.stack([d(inputs).squeeze(-1) for d in self.discriminators]).mean(0)

    def calibrated_logit(self, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """logit of the calibrated D: the log density ratio log p_data / p_G that MH uses."""
        a, b = self.calibration
        with torch.no_grad():
            return (a * self.ensemble_logit(x, labels) + b).double().numpy()

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(labels, self.n_classes).float()


def fit(features: np.ndarray, labels: np.ndarray, n_classes: int, *, discriminators: int, steps: int,
        noise_dim: int, hidden: int, lr: float, seed: int) -> TabularGan:
    """Train the GAN on real rows (``features`` (n, d) float, ``labels`` (n,) class indices), then calibrate its D."""
    x_real = torch.as_tensor(features, dtype=torch.float32)
    y_real = torch.as_tensor(labels, dtype=torch.long)
    mean, std = x_real.mean(0), x_real.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x_real = (x_real - mean) / std
    n, dim = x_real.shape
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        generator = _mlp(noise_dim + n_classes, hidden, dim)
        ensemble = [_mlp(dim + n_classes, hidden, 1) for _ in range(discriminators)]
    gan = TabularGan(generator, ensemble, mean, std, n_classes, noise_dim)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([p for d in ensemble for p in d.parameters()], lr=lr, betas=(0.5, 0.999))
    bce = nn.functional.binary_cross_entropy_with_logits
    batch = min(n, 64)
    for _ in range(steps):
        # Discriminators: each its own bootstrap of the real rows (ensemble diversity), one shared fake batch.
        fake_labels = y_real[torch.randint(n, (batch,), generator=rng)]
        fake = gan.generate(fake_labels, rng)
        loss_d = 0.0
        for d in ensemble:
            idx = torch.randint(n, (batch,), generator=rng)
            real_logit = d(torch.cat([x_real[idx], gan._onehot(y_real[idx])], 1)).squeeze(-1)
            fake_logit = d(torch.cat([fake, gan._onehot(fake_labels)], 1)).squeeze(-1)
            loss_d = loss_d + bce(real_logit, torch.ones_like(real_logit)) + bce(fake_logit, torch.zeros_like(fake_logit))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        # Generator: non-saturating loss on the ensemble's mean logit (the score MH samples by).
        z = torch.randn(batch, noise_dim, generator=rng)
        g_labels = y_real[torch.randint(n, (batch,), generator=rng)]
        fake = generator(torch.cat([z, gan._onehot(g_labels)], 1))
        logit = gan.ensemble_logit(fake, g_labels)
        loss_g = bce(logit, torch.ones_like(logit))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    gan.calibration = _platt(gan, x_real, y_real, rng)
    return gan


def _platt(gan: TabularGan, x_real: torch.Tensor, y_real: torch.Tensor, rng: torch.Generator) -> tuple[float, float]:
    """Platt scaling (a, b) of the ensemble logit: logistic regression of real (1) vs generated (0) rows."""
    with torch.no_grad():
        fake = gan.generate(y_real, rng)
        scores = torch.cat([gan.ensemble_logit(x_real, y_real), gan.ensemble_logit(fake, y_real)]).double()
    target = torch.cat([torch.ones(len(x_real)), torch.zeros(len(x_real))]).double()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # A small ridge keeps the scale finite when real and generated rows separate perfectly.
        loss = nn.functional.binary_cross_entropy_with_logits(params[0] * scores + params[1], target)
        loss = loss + 1e-3 * params[0] ** 2
        loss.backward()
        return loss

    opt.step(closure)
    a, b = params.detach().tolist()
    return float(a), float(b)


@dataclass
class Samples:
    features: np.ndarray  # (m, d) in the original units
    labels: np.ndarray  # (m,) class indices
    proposals: int
    accepted: int
    restarts: int


def sample(gan: TabularGan, real_features: np.ndarray, real_labels: np.ndarray, per_class: list[int], *,
           sampler: str, chain_length: int, seed: int) -> Samples:
    """``per_class[c]`` synthetic rows of class c: MH chains (``sampler="mh"``) or the generator's draws (``"plain"``)."""
    rng = torch.Generator().manual_seed(seed + 1)
    np_rng = np.random.default_rng(seed + 1)
    x_real = (torch.as_tensor(real_features, dtype=torch.float32) - gan.mean) / gan.std
    y_real = torch.as_tensor(real_labels, dtype=torch.long)
    out_x, out_y, proposals, accepted, restarts = [], [], 0, 0, 0
    for c, m in enumerate(per_class):
        if m == 0:
            continue
        labels = torch.full((m,), c, dtype=torch.long)
        if sampler == "plain":
            out_x.append(gan.generate(labels, rng))
            out_y.append(labels)
            continue
        # Start each chain at a real row of its class, cycling through them in a seeded order.
        rows = torch.nonzero(y_real == c).squeeze(-1)
        start = rows[torch.as_tensor(np_rng.permutation(np.resize(np.arange(len(rows)), m)))]
        x, took, stuck = _chains(gan, x_real[start], labels, chain_length, rng, np_rng)
        proposals += m * chain_length
        accepted += took
        if stuck.any():  # MH-GAN: a chain that never left its real start is restarted from a generator sample
            restarts += int(stuck.sum())
            k = int(stuck.sum())
            again, took, _ = _chains(gan, gan.generate(labels[:k], rng), labels[:k], chain_length, rng, np_rng)
            x[torch.as_tensor(stuck)] = again
            proposals += k * chain_length
            accepted += took
        out_x.append(x)
        out_y.append(labels)
    if not out_x:
        return Samples(np.zeros((0, len(gan.mean)), np.float32), np.zeros(0, np.int64), 0, 0, 0)
    x = torch.cat(out_x) * gan.std + gan.mean
    return Samples(x.numpy(), torch.cat(out_y).numpy(), proposals, accepted, restarts)


def _chains(gan, start, labels, chain_length, rng, np_rng):
    """One chain per start row: the final states, the number of accepted proposals, and which never moved."""
    m = len(labels)
    props = gan.generate(labels.repeat_interleave(chain_length), rng).reshape(m, chain_length, -1)
    prop_logits = gan.calibrated_logit(props.reshape(m * chain_length, -1),
                                       labels.repeat_interleave(chain_length)).reshape(m, chain_length)
    state, accepted = run_chains(gan.calibrated_logit(start, labels), prop_logits,
                                 np_rng.random((m, chain_length)))
    final = start.clone()
    moved = state >= 0
    final[torch.as_tensor(moved)] = props[torch.as_tensor(np.nonzero(moved)[0]), torch.as_tensor(state[moved])]
    return final, int(accepted.sum()), ~moved
