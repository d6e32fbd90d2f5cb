"""Routed nn.Linear layers: the engine's compact weight gradients through a reused workspace."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from ftplugins.sparse.linear_grad import route_linear_gradients, unroute_linear_gradients
from ftplugins.sparse.optimizer import SparseAdamW


class Net(nn.Module):
    """Two Linear layers (3-D inputs), one without bias, and a weight also used outside its Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(6, 10)
        self.down = nn.Linear(10, 6, bias=False)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = self.down(torch.tanh(self.up(x)))
        tied = torch.nn.functional.linear(x, self.down.weight.t())  # the down weight used again, transposed
        return self.head(h + tied.tanh().sum(-1, keepdim=True))


def masks(model, density=0.4):
    g = torch.Generator().manual_seed(1)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters()}


def compact_grads(route: bool, autocast: bool = False):
    model = Net()
    params = list(model.named_parameters())
    optimizer = SparseAdamW(params, masks(model), lr=0.1)
    hooked = []
    accumulate = optimizer._accumulate
    optimizer._accumulate = lambda param: (param.grad is not None and hooked.append(param), accumulate(param))
    if route:
        assert route_linear_gradients(model, optimizer) == 3
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 6, generator=g, requires_grad=True)
    for _ in range(2):  # two micro-batches accumulate
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x).float().pow(2).mean()
        loss.backward()
    grads = {n: optimizer._grads[p].clone() for n, p in params}
    optimizer.hooked = {n for n, p in params if any(p is h for h in hooked)}
    return grads, x.grad.clone(), optimizer, model


def test_routed_compact_gradients_equal_the_hook_path():
    plain, plain_x, unrouted, _ = compact_grads(route=False)
    routed, routed_x, optimizer, model = compact_grads(route=True)
    assert unrouted.hooked == set(plain)
    # Routed weights skip autograd's .grad; only the biases and the down weight's second (tied) use do not.
    assert optimizer.hooked == {"up.bias", "head.bias", "down.weight"}
    assert plain.keys() == routed.keys()
    for name in plain:
        torch.testing.assert_close(routed[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)
    torch.testing.assert_close(routed_x, plain_x, rtol=1e-6, atol=1e-7)  # input gradients unchanged
    assert all(p.grad is None for p in model.parameters())  # no dense .grad was left anywhere


@pytest.mark.parametrize("autocast", [False, True])
def test_products_computed_by_blocks_of_rows_equal_the_whole_product(monkeypatch, autocast):
    import ftplugins.sparse.linear_grad as linear_grad

    whole, _, _, _ = compact_grads(route=True, autocast=autocast)
    monkeypatch.setattr(linear_grad, "PRODUCT_BLOCK", 12)  # blocks of 2, 1 and 2 rows for up, down and head
    blocked, _, optimizer, model = compact_grads(route=True, autocast=autocast)
    assert [linear_grad.rows_per_block(m.weight, optimizer.state[m.weight].get("indices"))
            for m in (model.up, model.down, model.head)] == [2, 1, 2]
    assert max(w.numel() for w in optimizer._workspaces.values()) == 12  # a block, not the largest weight (60)
    for name in whole:
        torch.testing.assert_close(blocked[name], whole[name], rtol=1e-6, atol=1e-7, msg=name)


def test_routed_gradients_follow_autocast_like_plain_autograd():
    plain, plain_x, _, _ = compact_grads(route=False, autocast=True)
    routed, routed_x, _, _ = compact_grads(route=True, autocast=True)
    for name in plain:
        torch.testing.assert_close(routed[name], plain[name], rtol=1e-2, atol=1e-3, msg=name)
    torch.testing.assert_close(routed_x, plain_x, rtol=1e-2, atol=1e-3)


def test_routed_training_steps_equal_unrouted_ones():
    results = []
    for route in (False, True):
        model = Net()
        optimizer = SparseAdamW(list(model.named_parameters()), masks(model), lr=0.05, weight_decay=0.1)
        if route:
            route_linear_gradients(model, optimizer)
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
        for _ in range(3):
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-6, atol=1e-7, msg=name)


def test_unrouting_and_a_dropped_optimizer_give_plain_linear_layers():
    model = Net()
    optimizer = SparseAdamW(list(model.named_parameters()), masks(model), lr=0.1)
    route_linear_gradients(model, optimizer)
    assert "forward" in vars(model.up)
    unroute_linear_gradients(model)
    assert "forward" not in vars(model.up)

    route_linear_gradients(model, optimizer)
    del optimizer
    gc.collect()
    model(torch.randn(2, 6)).sum().backward()  # routed layers fall back to autograd's own gradients
    assert model.up.weight.grad is not None and model.down.weight.grad is not None


def test_a_deep_copy_of_a_routed_model_is_a_plain_model():
    import copy

    model = Net()
    optimizer = SparseAdamW(list(model.named_parameters()), masks(model), lr=0.1)
    route_linear_gradients(model, optimizer)
    x = torch.randn(2, 6)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), model(x))
    clone(x).sum().backward()  # the copy's weights are not the optimizer's: autograd's own .grad
    assert clone.up.weight.grad is not None and clone.head.weight.grad is not None
    model(x).sum().backward()
    assert model.up.weight.grad is None  # the original is still routed
    assert optimizer._grads

