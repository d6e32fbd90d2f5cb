"""Sparse deltas: exact apply / revert, order-independent composition, safetensors files, the CLI."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ftplugins.cli import main
from ftplugins.errors import FtpluginsError
from ftplugins.sparse.delta import (
    DeltaTensor,
    SparseDelta,
    apply_delta,
    compose_deltas,
    delta_from_optimizer,
    diff_delta,
    load_delta,
    revert_delta,
    save_delta,
    save_optimizer_delta,
)
from ftplugins.sparse.optimizer import SparseAdamW
from ftplugins.sparse.selection import per_tensor, topk_indices
from ftplugins.testing import save_tiny_llama


def gen(seed):
    return torch.Generator().manual_seed(seed)


def base_weights(dtype=torch.float32, seed=0):
    g = gen(seed)
    weights = {"a.weight": torch.randn(30, 20, generator=g), "b.weight": torch.randn(50, generator=g),
               "c.bias": torch.randn(7, generator=g)}
    # the hard cases for float arithmetic: small base values moved by large amounts, and the reverse
    weights["a.weight"][0, :5] = torch.tensor([1e-6, -3e-5, 2e-4, 0.0, -0.0])
    weights["a.weight"][1, :3] = torch.tensor([3e4, -2e4, 1e3])
    return {k: v.to(dtype) for k, v in weights.items()}


def fine_tuned(base, density=0.2, seed=1, scale=0.05):
    """Change a random subset of entries (the hard cases above always included)."""
    g = gen(seed)
    out = {}
    for name, weight in base.items():
        mask = torch.rand(weight.shape, generator=g) < density
        if name == "a.weight":
            mask[0, :5] = mask[1, :3] = True
        change = scale * torch.randn(weight.shape, generator=g)
        change[0:2] = change[0:2] * 1e3 if name == "a.weight" else change[0:2]
        out[name] = torch.where(mask, (weight.double() + change.double()).to(weight.dtype), weight)
    return out


def same(x, y):
    return all(torch.equal(x[k], y[k]) for k in x) and x.keys() == y.keys()


def copy_of(weights):
    return {k: v.clone() for k, v in weights.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_and_revert_are_exact(dtype):
    base = base_weights(dtype)
    tuned = fine_tuned(base)
    delta = diff_delta(tuned, base)
    changed = sum(int((tuned[k] != base[k]).sum()) for k in base)
    assert delta.nnz == changed > 0  # exactly the entries that changed
    assert same(apply_delta(copy_of(base), delta), tuned)  # bit for bit
    assert same(revert_delta(copy_of(tuned), delta), base)
    assert same(revert_delta(apply_delta(copy_of(base), delta), delta), base)  # apply∘revert = identity
    assert {t.values.dtype for t in delta.tensors.values()} == {torch.float64}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float32_delta_would_not_be_exact(dtype):
    """Why values are stored in fp64: fp32 differences do not round-trip."""
    base = base_weights(dtype)
    tuned = fine_tuned(base)
    delta = diff_delta(tuned, base)
    narrow = SparseDelta({n: DeltaTensor(t.shape, t.indices, t.values.float()) for n, t in delta.tensors.items()})
    assert not same(revert_delta(apply_delta(copy_of(base), narrow), narrow), base)


def three_deltas():
    base = base_weights()
    deltas = [diff_delta(fine_tuned(base, density=0.3, seed=s), base) for s in (1, 2, 3)]
    return base, deltas


def test_composition_is_order_independent_and_sums():
    base, (a, b, c) = three_deltas()
    orders = [[a, b, c], [c, a, b], [b, c, a]]
    results = [apply_delta(copy_of(base), compose_deltas(order)) for order in orders]
    assert all(same(results[0], r) for r in results[1:])
    assert all(same(results[0], apply_delta(copy_of(base), *order)) for order in orders)  # apply composes first
    composed = compose_deltas([a, b, c])
    for name, entry in composed.tensors.items():
        union = torch.unique(torch.cat([d.tensors[name].indices for d in (a, b, c)]))
        assert torch.equal(entry.indices, union)
        assert entry.nnz <= sum(d.tensors[name].nnz for d in (a, b, c))
        dense = torch.zeros(entry.numel, dtype=torch.float64)
        for d in (a, b, c):
            dense[d.tensors[name].indices] += d.tensors[name].values
        torch.testing.assert_close(entry.values, dense[entry.indices], rtol=0, atol=0)
    # composing with the negation of one delta removes it (exactly, in fp64)
    assert same(apply_delta(copy_of(base), a, b, c, c.scaled(-1.0)), apply_delta(copy_of(base), a, b))


def test_dense_entries_compose_with_sparse_ones():
    base = base_weights()
    tuned = fine_tuned(base)
    delta = diff_delta(tuned, base, dense=["c.bias"])
    assert delta.tensors["c.bias"].indices is None and delta.tensors["c.bias"].nnz == 7
    other = diff_delta(fine_tuned(base, seed=5), base)
    composed = compose_deltas([delta, other])
    assert composed.tensors["c.bias"].indices is None
    assert same(apply_delta(copy_of(base), composed), apply_delta(copy_of(base), compose_deltas([other, delta])))


def test_files_round_trip_without_pickle(tmp_path):
    base = base_weights(torch.bfloat16)
    delta = diff_delta(fine_tuned(base), base, dense=["c.bias"])
    delta.metadata["method"] = "test"
    path = save_delta(delta, str(tmp_path / "d" / "sparse_delta.safetensors"))
    with safe_open(path, framework="pt") as handle:  # a plain safetensors file
        header = handle.metadata()
        assert header["format"] == "ftplugins.sparse_delta" and header["method"] == "test"
        assert handle.get_tensor("delta_indices/a.weight").dtype == torch.int32  # small tensors: int32 on disk
        assert "delta_indices/c.bias" not in handle.keys()
    loaded = load_delta(path)
    assert loaded.metadata["method"] == "test" and loaded.tensors.keys() == delta.tensors.keys()
    for name, entry in delta.tensors.items():
        again = loaded.tensors[name]
        assert again.shape == entry.shape and torch.equal(again.values, entry.values)
        assert (again.indices is None) == (entry.indices is None)
        if entry.indices is not None:
            assert again.indices.dtype == torch.int64 and torch.equal(again.indices, entry.indices)
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []


def test_a_crash_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    base = base_weights()
    first, second = (diff_delta(fine_tuned(base, seed=s), base) for s in (1, 2))
    path = str(tmp_path / "sparse_delta.safetensors")
    save_delta(first, path)
    before = open(path, "rb").read()

    import ftplugins.safetensors_stream as stream

    real = stream.write_streamed

    def torn(filename, *args, **kwargs):
        real(filename, *args, **kwargs)
        with open(filename, "r+b") as handle:
            handle.truncate(20)
        raise KeyboardInterrupt("crash")

    monkeypatch.setattr(stream, "write_streamed", torn)
    with pytest.raises(KeyboardInterrupt):
        save_delta(second, path)
    assert open(path, "rb").read() == before
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []


def test_bad_files_and_targets_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FtpluginsError, match="not an ftplugins sparse delta"):
        load_delta(str(tmp_path / "model.safetensors"))
    with pytest.raises(FtpluginsError, match="does not exist"):
        load_delta(str(tmp_path / "nope.safetensors"))
    save_file({"delta_values/w": torch.ones(2), "delta_indices/w": torch.tensor([3, 1])},
              str(tmp_path / "bad.safetensors"), metadata={"format": "ftplugins.sparse_delta", "shapes": '{"w": [4]}'})
    with pytest.raises(FtpluginsError, match="tensor w: indices are not sorted"):
        load_delta(str(tmp_path / "bad.safetensors"))
    base = base_weights()
    delta = diff_delta(fine_tuned(base), base)
    with pytest.raises(FtpluginsError, match="does not have"):
        apply_delta({"a.weight": base["a.weight"].clone()}, delta)
    with pytest.raises(FtpluginsError, match="shape"):
        apply_delta({**copy_of(base), "b.weight": torch.zeros(49)}, delta)


# --- deltas from the optimizer ----------------------------------------------------------------------


def test_delta_from_the_optimizer_equals_the_weight_difference(tmp_path):
    """Only the origin values of ever-selected entries are kept, yet the delta is W - W0, refreshes included."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(torch.bfloat16)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    def rule(w):
        if w.dim() < 2:
            return None  # biases train dense: a dense delta entry
        noise = torch.rand(w.shape, generator=gen(int(w.float().abs().sum() * 1000)))  # changes as w moves
        return topk_indices(w.float().abs() * noise, w.numel() // 5)

    optimizer = SparseAdamW(list(model.named_parameters()), per_tensor(rule), lr=5e-2, refresh_interval=2,
                            track_origin=True)
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    ever = {n: set(optimizer.state[model.get_parameter(n)]["indices"].tolist()) for n in weights}
    for step in range(6):
        x = torch.randn(8, 8, generator=gen(step)).to(torch.bfloat16)
        model(x).float().pow(2).mean().backward()
        optimizer.step()
        for name in weights:
            ever[name] |= set(optimizer.state[model.get_parameter(name)]["indices"].tolist())
    delta = delta_from_optimizer(optimizer)
    reference = diff_delta(weights, initial)
    for name in weights:
        assert torch.equal(delta.tensors[name].indices, reference.tensors[name].indices), name
        assert torch.equal(delta.tensors[name].values, reference.tensors[name].values), name
        assert set(delta.tensors[name].indices.tolist()) <= ever[name]
        assert len(ever[name]) > weights[name].numel() // 5  # the refreshes did select new entries
    for name in ("0.bias", "2.bias"):
        bias = model.get_parameter(name).detach()
        assert delta.tensors[name].indices is None
        assert torch.equal(delta.tensors[name].values, bias.double() - initial[name].double())
    assert same(apply_delta(copy_of(initial), delta), {n: p.detach() for n, p in model.named_parameters()})
    # Written one tensor at a time, it is the same delta, in a file any safetensors reader opens.
    path = save_optimizer_delta(optimizer, str(tmp_path / "streamed.safetensors"), {"method": "test"})
    assert set(load_file(path)) == {f"delta_values/{n}" for n in delta.tensors} | {
        f"delta_indices/{n}" for n, e in delta.tensors.items() if e.indices is not None}
    streamed = load_delta(path)
    assert streamed.metadata["method"] == "test"
    for name, entry in delta.tensors.items():
        assert torch.equal(streamed.tensors[name].values, entry.values), name
        assert (streamed.tensors[name].indices is None) == (entry.indices is None)
        if entry.indices is not None:
            assert torch.equal(streamed.tensors[name].indices, entry.indices), name
    untracked = SparseAdamW(list(model.named_parameters()), per_tensor(rule), lr=1e-2)
    with pytest.raises(FtpluginsError, match="track_origin"):
        delta_from_optimizer(untracked)
    with pytest.raises(FtpluginsError, match="track_origin"):
        save_optimizer_delta(untracked, str(tmp_path / "nope.safetensors"))


def test_streamed_writes_refuse_tensors_that_do_not_match_the_layout(tmp_path):
    from ftplugins.safetensors_stream import write_streamed

    layout = [("a", torch.float32, (2, 3)), ("b", torch.int32, (4,))]
    path = str(tmp_path / "x.safetensors")
    write_streamed(path, layout, iter([torch.ones(2, 3), torch.arange(4, dtype=torch.int32)]), {"k": "v"})
    loaded = load_file(path)
    assert torch.equal(loaded["a"], torch.ones(2, 3)) and torch.equal(loaded["b"], torch.arange(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="declared"):
        write_streamed(path, layout, iter([torch.ones(2, 3), torch.arange(4)]))  # int64, not int32
    with pytest.raises(ValueError, match="no tensor"):
        write_streamed(path, layout, iter([torch.ones(2, 3)]))
    with pytest.raises(ValueError, match="more tensors"):
        write_streamed(path, layout[:1], iter([torch.ones(2, 3), torch.ones(1)]))


# --- the command line ----------------------------------------------------------------------------------


def perturbed_model_dir(base_dir, out_dir, seed):
    """A copy of the saved tiny Llama with a few weights changed, and its delta."""
    base = load_file(os.path.join(base_dir, "model.safetensors"))
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    tuned = fine_tuned({n: base[n] for n in names}, density=0.1, seed=seed)
    return diff_delta(tuned, {n: base[n] for n in names}), tuned


def test_cli_apply_revert_compose(tmp_path, capsys):
    base_dir = save_tiny_llama(str(tmp_path / "base"))
    base = load_file(str(tmp_path / "base" / "model.safetensors"))
    d1, tuned1 = perturbed_model_dir(base_dir, tmp_path, 1)
    d2, _ = perturbed_model_dir(base_dir, tmp_path, 2)
    p1 = save_delta(d1, str(tmp_path / "d1.safetensors"))
    p2 = save_delta(d2, str(tmp_path / "d2.safetensors"))

    main(["delta", "apply", base_dir, p1, "-o", str(tmp_path / "tuned")])
    assert "added 1 delta(s)" in capsys.readouterr().out
    tuned = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    for name, value in base.items():
        assert torch.equal(tuned[name], tuned1[name] if name in tuned1 else value), name
    assert sorted(os.listdir(tmp_path / "tuned")) == sorted(os.listdir(base_dir))  # config, tokenizer copied

    main(["delta", "revert", str(tmp_path / "tuned"), p1, "-o", str(tmp_path / "back")])
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert all(torch.equal(back[n], base[n]) for n in base)

    main(["delta", "compose", p1, p2, "-o", str(tmp_path / "both.safetensors")])
    main(["delta", "apply", base_dir, str(tmp_path / "both.safetensors"), "-o", str(tmp_path / "composed")])
    main(["delta", "apply", base_dir, p2, p1, "-o", str(tmp_path / "reversed")])
    composed = load_file(str(tmp_path / "composed" / "model.safetensors"))
    reversed_ = load_file(str(tmp_path / "reversed" / "model.safetensors"))
    assert all(torch.equal(composed[n], reversed_[n]) for n in base)
    assert not all(torch.equal(composed[n], tuned[n]) for n in base)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "tuned"))  # a loadable model folder
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, tuned1["model.layers.0.self_attn.q_proj.weight"])


def test_cli_errors_exit_cleanly(tmp_path, capsys):
    base_dir = save_tiny_llama(str(tmp_path / "base"))
    entry = DeltaTensor((2,), torch.tensor([0]), torch.tensor([1.0], dtype=torch.float64))
    delta = SparseDelta({"no.such.weight": entry})
    path = save_delta(delta, str(tmp_path / "d.safetensors"))
    with pytest.raises(SystemExit) as exit_info:
        main(["delta", "apply", base_dir, path, "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "no tensor(s) ['no.such.weight']" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")
