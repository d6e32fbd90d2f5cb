"""The Metropolis-Hastings independence sampler of MH-GAN (Turner et al., ICML 2019, arXiv:1811.11357).

A calibrated discriminator D gives the density ratio p_data(x) / p_G(x) = D(x) / (1 - D(x)). With the generator as
an independence proposal, the textbook MH acceptance of a proposal x' from the current state x is

    alpha = min(1, (D(x)^-1 - 1) / (D(x')^-1 - 1)) = min(1, exp(logit D(x') - logit D(x)))

so the chain's stationary distribution is p_data whatever the generator, as far as D is exact. Everything here works on
logits (log density ratios) to stay finite where D is near 0 or 1. Pure numpy: the sampler is tested on its own
against a closed-form target (tests/test_gan_augment.py).
"""

from __future__ import annotations

import numpy as np


def acceptance_probability(d_current: np.ndarray, d_proposal: np.ndarray) -> np.ndarray:
    """MH-GAN's acceptance min(1, (D(x)^-1 - 1) / (D(x')^-1 - 1)), as written in the paper (probabilities in (0, 1))."""
    d_current, d_proposal = np.asarray(d_current, float), np.asarray(d_proposal, float)
    return np.minimum(1.0, (1.0 / d_current - 1.0) / (1.0 / d_proposal - 1.0))


def run_chains(initial_logits: np.ndarray, proposal_logits: np.ndarray, uniforms: np.ndarray):
    """Run one independence chain per row.

    ``initial_logits`` (n,): logit D of each chain's start; ``proposal_logits`` (n, K): logit D of its K proposals in
    order; ``uniforms`` (n, K): the U(0, 1) draws that decide each acceptance. Returns ``(state, accepted)``: the
    index of each chain's final state among its proposals (-1: it never left its start) and the number of accepted
    proposals per chain.
    """
    current = np.asarray(initial_logits, float).copy()
    proposal_logits = np.asarray(proposal_logits, float)
    n, steps = proposal_logits.shape
    state = np.full(n, -1, dtype=np.int64)
    accepted = np.zeros(n, dtype=np.int64)
    log_u = np.log(np.asarray(uniforms, float))
    for k in range(steps):
        # log alpha = min(0, logit D(x') - logit D(x)); accept when log u < log alpha.
        take = log_u[:, k] < np.minimum(0.0, proposal_logits[:, k] - current)
        current = np.where(take, proposal_logits[:, k], current)
        state = np.where(take, k, state)
        accepted += take
    return state, accepted
