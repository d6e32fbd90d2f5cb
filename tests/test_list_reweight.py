"""LiST's meta re-weighting and weighted distillation, on a small linear model where the answer is known."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ftplugins.methods.list_selftrain.reweight import (
    meta_weights, per_example_kl, reweighting_on, uniform_weights, weighted_distillation)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    xu, xl = torch.randn(6, 4), torch.randn(5, 4)
    teacher = torch.randn(6, 3)
    yl = torch.tensor([0, 1, 2, 0, 1])

    def unlabelled(params):
        return per_example_kl(functional_call(model, params, (xu,)), teacher)

    def labelled(params):
        return torch.nn.functional.cross_entropy(functional_call(model, params, (xl,)), yl)

    return model, unlabelled, labelled


def test_weights_are_the_clamped_alignment_of_each_example_with_the_labelled_gradient(problem):
    model, unlabelled, labelled = problem
    params = dict(model.named_parameters())
    weights = meta_weights(params, unlabelled, labelled, lr=0.1)
    assert weights.shape == (6,) and bool((weights >= 0).all()) and float(weights.sum()) == pytest.approx(1.0)
    # At ε = 0, θ' = θ: −∂L_l(θ')/∂εᵢ = η ∇L_l(θ)·∇lᵢ(θ), computed here with plain autograd.
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    g_l = flat(torch.autograd.grad(labelled(params), list(params.values())))
    raw = torch.stack([0.1 * (g_l @ flat(torch.autograd.grad(unlabelled(params)[i], list(params.values()))))
                       for i in range(6)]).clamp(min=0)
    assert bool((raw == 0).any()) and bool((raw > 0).any())  # the clamp matters on this batch
    assert torch.allclose(weights, raw / raw.sum(), atol=1e-6)


def test_the_virtual_step_leaves_the_real_weights_and_grads_untouched(problem):
    model, unlabelled, labelled = problem
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    meta_weights(dict(model.named_parameters()), unlabelled, labelled, lr=0.5)
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())


def test_no_helpful_example_gives_all_zero_weights(problem):
    model, unlabelled, labelled = problem
    # The same example twice, and a labelled loss that is minus its loss: a virtual step on it raises that loss.
    twice = lambda p: unlabelled(p)[[0, 0]]  # noqa: E731
    weights = meta_weights(dict(model.named_parameters()), twice, lambda p: -unlabelled(p)[0], lr=0.1)
    assert torch.equal(weights, torch.zeros(2))


def test_uniform_for_the_first_sixty_percent_of_a_session():
    assert [reweighting_on(step, 10) for step in range(10)] == [False] * 6 + [True] * 4
    assert torch.allclose(uniform_weights(4), torch.full((4,), 0.25))


def test_weighted_distillation_is_the_weighted_kl_and_the_teacher_gets_no_gradient():
    torch.manual_seed(1)
    student = torch.randn(3, 2, requires_grad=True)
    teacher = torch.randn(3, 2, requires_grad=True)
    weights = torch.tensor([0.5, 0.5, 0.0])
    loss = weighted_distillation(student, teacher, weights)
    p_t, log_s = teacher.softmax(-1), student.log_softmax(-1)
    expected = (weights * (p_t * (p_t.log() - log_s)).sum(-1)).sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad is not None and torch.equal(student.grad[2], torch.zeros(2))
