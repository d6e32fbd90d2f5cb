"""The sparse engine on FSDP2's dim-0 shards (2 CPU processes, gloo): LIFT and SaRA train, re-select and save their
delta as one process does with the same global batch, and each process keeps the optimizer state of its rows only."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_fsdp import launch

# Each with a re-selection inside the 3 steps: LIFT re-selects after step 2 (small budgets, so that selection matters);
# SaRA's progressive stage shrinks its mask after step 1 (T_p = 3 // 2; τ = 0.05 keeps about half of the entries the
# first step moved by lr = 0.05) and its nuclear-norm term acts on every step. max_grad_norm below the norms: the steps
# clip by the norm summed over both processes' rows.
CASES = {
    "lift": dict(lift_rank=4, lift_budget_rank=2, lift_interval=2, max_grad_norm=0.1),
    "sara": dict(sara_threshold=0.05, sara_rank_lambda=5e-4, sara_rank_min_dim=16, max_grad_norm=0.1),
}
# Clipping scales SaRA's first gradients down to where a few entries' |g| is near Adam's eps, whose first step
# g / (|g| + eps) then lifts the reduction-order rounding (measured with τ = 0.01: one entry of 2016 off by 2e-5);
# training moves the weights by ~0.05, 500 times the absolute tolerance.
TOLERANCE = {"lift": dict(rtol=1e-4, atol=1e-5), "sara": dict(rtol=1e-3, atol=1e-4)}


@pytest.fixture(scope="module")
def uneven_model_dir(tmp_path_factory) -> str:
    """The tiny Llama with 63-row gate/up projections: torch's chunking gives process 0 32 rows, process 1 31."""
    from ftplugins.testing import save_tiny_llama

    return save_tiny_llama(str(tmp_path_factory.mktemp("uneven-llama")), intermediate_size=63)


def dense(delta):
    """``{name: W - W0}`` as whole tensors (the delta files may drop different exact zeros)."""
    out = {}
    for name, entry in delta.tensors.items():
        flat = torch.zeros(entry.numel, dtype=torch.float32)
        flat[entry.flat_indices()] = entry.values.to(torch.float32)
        out[name] = flat.view(entry.shape)
    return out


def state_sizes(stdout, at=""):
    """``{rank: (trained entries, bytes of optimizer state)}`` the child reported after training (``at="step=1"``:
    after the first step, before any re-selection rebuilt the state)."""
    at = at.replace("step=", " at_step=")
    found = re.findall(rf"rank=(\d){at} sparse_state_entries=(\d+) sparse_state_bytes=(\d+)", stdout)
    return {int(rank): (int(entries), int(nbytes)) for rank, entries, nbytes in found}


@pytest.mark.slow
@pytest.mark.parametrize("plugin", sorted(CASES))
def test_fsdp2_sparse_method_equals_one_process_with_each_rank_holding_its_rows(plugin, uneven_model_dir, data_dir,
                                                                                tmp_path):
    """Weights after 3 steps, the saved model and the saved sparse delta equal 1 process with the same global batch
    (on uneven shards), and the optimizer state is split between the processes by rows."""
    from ftplugins.sparse import load_delta

    data, options = f"{data_dir}/arithmetic", dict(plugins=[plugin], **CASES[plugin])
    reference = launch(tmp_path, "one", uneven_model_dir, data, "one", options, child=True)
    sharded = launch(tmp_path, "fsdp", uneven_model_dir, data, "fsdp", options)

    base = load_file(f"{uneven_model_dir}/model.safetensors")
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(sharded / "model.safetensors"))
    assert a.keys() == b.keys() == base.keys()
    assert any(not torch.equal(a[k], base[k]) for k in a), "training changed no weight"
    for key in a:  # fp32; only the order of the gradient sums differs (see test_fsdp.py)
        torch.testing.assert_close(a[key], b[key], **TOLERANCE[plugin], msg=key)

    # The logged (pre-clip) gradient norm is the whole model's: the squares of both processes' rows summed.
    norms = [[float(x) for x in re.findall(r"'grad_norm': '([0-9.e+-]+)'", (tmp_path / f"{run}.stdout").read_text())]
             for run in ("one", "fsdp")]
    assert len(norms[0]) == 3 and norms[0][0] > 0.1, norms
    torch.testing.assert_close(norms[1], norms[0], rtol=2e-3, atol=0)

    one = load_delta(str(reference / "sparse_delta.safetensors"))
    two = load_delta(str(sharded / "sparse_delta.safetensors"))
    assert one.tensors.keys() == two.tensors.keys() and len(one.tensors) > 0
    assert two.metadata.get("global_step") == "3"
    one, two = dense(one), dense(two)
    for key in one:
        torch.testing.assert_close(one[key], two[key], **TOLERANCE[plugin], msg=key)
        assert torch.equal(one[key] != 0, two[key] != 0), f"{key}: the trained entries differ"
        torch.testing.assert_close(base[key] + two[key], b[key], rtol=0, atol=1e-6, msg=key)

    # Each process holds the compact state of its rows only: entries and bytes (moments, indices, origin values)
    # add up to the 1-process state, and neither process holds most of it (rows split evenly, selections roughly).
    one_entries, one_bytes = state_sizes((tmp_path / "one.stdout").read_text())[0]
    sizes = state_sizes((tmp_path / "fsdp.stdout").read_text())
    assert sorted(sizes) == [0, 1], (tmp_path / "fsdp.stdout").read_text()[-2000:]
    assert sizes[0][0] + sizes[1][0] == one_entries, (sizes, one_entries)
    assert sizes[0][1] + sizes[1][1] == one_bytes > 0, (sizes, one_bytes)
    assert max(nbytes for _, nbytes in sizes.values()) < 0.75 * one_bytes, (sizes, one_bytes)
    print(f"{plugin} under FSDP2: (entries, state bytes) per rank {sizes}; one process ({one_entries}, {one_bytes})")
    # Also right after step 1, as Accelerate's prepare handed the state over (its copy of the state dict once left
    # each process a second index list equal to `indices`: 4 bytes more per entry until a re-selection re-shared it).
    one_entries, one_bytes = state_sizes((tmp_path / "one.stdout").read_text(), at="step=1")[0]
    sizes = state_sizes((tmp_path / "fsdp.stdout").read_text(), at="step=1")
    assert sorted(sizes) == [0, 1] and sizes[0][0] + sizes[1][0] == one_entries, (sizes, one_entries)
    assert sizes[0][1] + sizes[1][1] == one_bytes > 0, (sizes, one_bytes)


@pytest.mark.slow
def test_fsdp2_lean_lift_updates_each_rows_shard_inside_the_backward_as_one_process(uneven_model_dir, data_dir,
                                                                                    tmp_path):
    """--lift_step_in_backward under FSDP2: each process updates its rows in FSDP's post-reduce-scatter gradient
    hook (none waits for the step: late_grads 0, no compact gradient buffer), and weights, logged norms, the delta
    and the per-rank state equal 1 process with the same global batch, a re-selection included."""
    from ftplugins.sparse import load_delta

    data = f"{data_dir}/arithmetic"
    options = dict(plugins=["lift"], lift_rank=4, lift_budget_rank=2, lift_interval=2, lift_step_in_backward=True,
                   max_grad_norm=0.0)
    reference = launch(tmp_path, "one", uneven_model_dir, data, "one", options, child=True)
    sharded = launch(tmp_path, "fsdp", uneven_model_dir, data, "fsdp", options)
    stdout = (tmp_path / "fsdp.stdout").read_text()
    assert sorted(re.findall(r"rank=(\d) late_grads=0 grad_buffers=0", stdout)) == ["0", "1"], stdout[-2000:]

    base = load_file(f"{uneven_model_dir}/model.safetensors")
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(sharded / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a), "training changed no weight"
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOLERANCE["lift"], msg=key)
    norms = [[float(x) for x in re.findall(r"'grad_norm': '([0-9.e+-]+)'", (tmp_path / f"{run}.stdout").read_text())]
             for run in ("one", "fsdp")]
    assert len(norms[0]) == 3 and norms[0][0] > 0, norms
    torch.testing.assert_close(norms[1], norms[0], rtol=2e-3, atol=0)
    one, two = (dense(load_delta(str(path / "sparse_delta.safetensors"))) for path in (reference, sharded))
    assert one.keys() == two.keys() and len(one) > 0
    for key in one:
        assert torch.equal(one[key] != 0, two[key] != 0), f"{key}: the trained entries differ"
        torch.testing.assert_close(one[key], two[key], **TOLERANCE["lift"], msg=key)
    for at in ("", "step=1"):
        one_entries, one_bytes = state_sizes((tmp_path / "one.stdout").read_text(), at=at)[0]
        sizes = state_sizes(stdout, at=at)
        assert sorted(sizes) == [0, 1] and sizes[0][0] + sizes[1][0] == one_entries, (at, sizes, one_entries)
        assert sizes[0][1] + sizes[1][1] == one_bytes > 0, (at, sizes, one_bytes)


def test_lean_lift_is_refused_under_ddp_with_the_reason_and_allowed_under_fsdp(monkeypatch):
    """An update inside the backward needs the gradient averaged when it arrives: FSDP2's reduce-scatter does that,
    DDP (whose average the engine makes at the step) does not, so DDP is refused naming why and what to use."""
    from ftplugins.errors import FtpluginsError
    from ftplugins.registry import load

    loaded = load("lift")
    options = SimpleNamespace(lift_step_in_backward=True)
    args = SimpleNamespace(world_size=2, max_grad_norm=0.0, gradient_accumulation_steps=1, fp16=False)
    run = SimpleNamespace(args=args, options_for=lambda plugin: options)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(FtpluginsError, match=r"--lift_step_in_backward under ddp: .*averaged .*use FSDP2"):
        loaded.validate(run=run)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    loaded.validate(run=run)  # FSDP2: allowed
    args.world_size = 1
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    loaded.validate(run=run)  # one process: allowed


@pytest.mark.parametrize("plugin", sorted(CASES))
def test_allowed_under_fsdp(plugin, monkeypatch, capsys):
    """The trainer check that refuses lt_sft and graft under FSDP (test_fsdp.py) lets these through, and
    `ftplugins info` lists fsdp among their supported modes with no refusal."""
    from ftplugins.cli import main
    from ftplugins.composition import _check_trainer_supported
    from ftplugins.registry import load

    loaded = load(plugin)
    run = type("Run", (), {"plugins": [loaded], "args": SimpleNamespace(world_size=2), "trainer_name": "SFTTrainer",
                           "trainer_cls": None, "has_base": staticmethod(lambda name: True)})()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    _check_trainer_supported(run)
    main(["info", plugin])
    out = capsys.readouterr().out
    assert "fsdp" in out and "refuses fsdp" not in out, out


@pytest.mark.slow
def test_fsdp2_lift_resumed_from_checkpoint_2_ends_where_the_uninterrupted_run_does(uneven_model_dir, data_dir,
                                                                                   tmp_path):
    """2 FSDP2 processes resume the step-2 checkpoint (with a re-selection at step 2) of an uninterrupted 3-step run
    and train step 3: weights and sparse delta equal the uninterrupted run's. Each process wrote its own rows' state
    (Accelerate's optimizer file holds rank 0's only: restoring that on rank 1 would train other entries)."""
    from ftplugins.sparse import load_delta

    data = f"{data_dir}/arithmetic"
    options = dict(plugins=["lift"], **CASES["lift"], save_strategy="steps", save_steps=2)
    straight = launch(tmp_path, "straight", uneven_model_dir, data, "fsdp", options)
    checkpoint = straight / "checkpoint-2"
    ranks = [torch.load(checkpoint / f"sparse_engine_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert any(not torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in zip(
        ranks[0]["optimizer"]["state"].values(), ranks[1]["optimizer"]["state"].values())), "same state on both ranks"
    resumed = launch(tmp_path, "resumed", uneven_model_dir, data, "fsdp",
                     dict(options, resume_from_checkpoint=str(checkpoint)))
    assert len(re.findall(r"'grad_norm'", (tmp_path / "resumed.stdout").read_text())) == 1, "not resumed at step 2"

    at_2, a, b = (load_file(str(path / "model.safetensors")) for path in (checkpoint, straight, resumed))
    assert any(not torch.equal(at_2[k], b[k]) for k in b), "the resumed run did not train step 3"
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    one, two = (load_delta(str(path / "sparse_delta.safetensors")) for path in (straight, resumed))
    assert two.metadata.get("global_step") == "3" and one.tensors.keys() == two.tensors.keys()
    one, two = dense(one), dense(two)
    for key in one:
        assert torch.equal(one[key] != 0, two[key] != 0), f"{key}: the trained entries differ"
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("plugin", sorted(CASES))
def test_an_fsdp2_checkpoint_resumed_outside_fsdp2_is_refused_by_name(plugin, tmp_path):
    """Each process's file holds the state of its rows: resuming such a checkpoint without FSDP2, or an FSDP2 resume
    of a checkpoint without the files, stops with the reason; a checkpoint without the files (DDP, 1 process)
    resumes outside FSDP2 as before."""
    from ftplugins.errors import FtpluginsError
    from ftplugins.registry import load

    loaded = load(plugin)
    plain = SimpleNamespace(is_fsdp_enabled=False, optimizer=None)
    loaded.load_optimizer_state(run=None, trainer=plain, checkpoint=str(tmp_path))  # no files: nothing to do
    with pytest.raises(FtpluginsError, match=f"{plugin}: resuming under FSDP2 needs .* has none"):
        loaded.load_optimizer_state(run=None, trainer=SimpleNamespace(is_fsdp_enabled=True, optimizer=_sparse()),
                                    checkpoint=str(tmp_path))
    for rank in (0, 1):
        torch.save({"rank": rank, "world_size": 2, "optimizer": {}}, tmp_path / f"sparse_engine_rank{rank}.pt")
    with pytest.raises(FtpluginsError, match=r"saved under FSDP2 by 2 processes.*not FSDP2 \(1 process"):
        loaded.load_optimizer_state(run=None, trainer=plain, checkpoint=str(tmp_path))


@pytest.mark.parametrize("saved, resumed", [(2, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("dense_origin", [False, True])
def test_row_shards_saved_by_some_processes_resplit_for_another_number(saved, resumed, dense_origin):
    """An FSDP2 checkpoint resumed with another number of processes: the saving processes' row states, put together,
    are the whole state again, and cut for each new process they equal its rows of the whole state."""
    from ftplugins.sparse.resume import whole_state
    from ftplugins.sparse.shards import localize_state

    rows, cols = 7, 3
    whole = torch.randn(rows, cols)
    indices = torch.tensor(sorted(torch.randperm(rows * cols)[:9].tolist()), dtype=torch.int32)
    origin = None if dense_origin else torch.tensor(sorted(set(indices.tolist()) | {0, 20}), dtype=torch.int32)
    state = {"step": 3, "indices": indices, "exp_avg": torch.randn(9), "exp_avg_sq": torch.rand(9),
             "origin_indices": origin,
             "origin_values": whole.reshape(-1) if origin is None else whole.reshape(-1)[origin.long()].clone()}
    pieces = [localize_state(state, _FakeShard(whole, saved, rank), "w") for rank in range(saved)]
    back = whole_state(pieces, tuple(whole.shape))
    assert back["step"] == 3 and torch.equal(back["indices"].long(), indices.long())
    assert (back["origin_indices"] is None) == dense_origin
    if not dense_origin:
        assert torch.equal(back["origin_indices"].long(), origin.long())
    for key in ("exp_avg", "exp_avg_sq", "origin_values"):
        assert torch.equal(back[key], state[key]), key
    for rank in range(resumed):
        want = localize_state(state, _FakeShard(whole, resumed, rank), "w")
        got = localize_state(back, _FakeShard(whole, resumed, rank), "w")
        assert want.keys() == got.keys()
        for key, value in want.items():
            same = torch.equal(value.long(), got[key].long()) if isinstance(value, torch.Tensor) else value == got[key]
            assert same, (rank, key)


def _sparse():
    """A one-weight SparseAdamW (what the resume hook looks for in the trainer)."""
    from ftplugins.sparse.optimizer import SparseAdamW

    weight = torch.nn.Parameter(torch.randn(4, 4))
    return SparseAdamW([("w", weight)], lambda weights: {name: None for name in weights})


class _FakeShard:
    """What the engine reads of an FSDP2 ``DTensor`` parameter: process ``rank``'s rows of ``whole``."""

    def __init__(self, whole, world, rank, placements=None, mesh_ndim=1):
        from torch.distributed.tensor import Shard

        from ftplugins.sparse.shards import chunk_rows

        self.shape, self._whole = whole.shape, whole
        self.placements = (Shard(0),) if placements is None else placements
        self.device_mesh = SimpleNamespace(ndim=mesh_ndim, size=lambda: world, get_local_rank=lambda: rank)
        start, end = chunk_rows(whole.shape[0], world, rank)
        self._local = whole[start:end]

    def dim(self):
        return self._whole.dim()

    def numel(self):
        return self._whole.numel()

    def to_local(self):
        return self._local


@pytest.mark.parametrize("rows, world", [(63, 2), (5, 4), (2, 3)])  # uneven; the last process with no row
def test_each_process_state_is_its_rows_of_the_whole_state(rows, world):
    """The whole-tensor state (as the optimizer builds it before Accelerate shards the model) cut for every process:
    the pieces are disjoint, re-based to each shard, and put back together give the whole state again."""
    from ftplugins.sparse.shards import chunk_rows, localize_state

    cols = 3
    whole = torch.randn(rows, cols)
    indices = torch.tensor(sorted(torch.randperm(rows * cols)[: rows * cols // 2].tolist()), dtype=torch.int32)
    state = {"step": 2, "indices": indices, "exp_avg": torch.randn(indices.numel()),
             "exp_avg_sq": torch.rand(indices.numel()), "origin_indices": indices,
             "origin_values": whole.reshape(-1)[indices.long()].clone()}
    pieces = [localize_state(state, _FakeShard(whole, world, rank), "w") for rank in range(world)]
    assert [chunk_rows(rows, world, r)[1] - chunk_rows(rows, world, r)[0] for r in range(world)] == [
        len(chunk) for chunk in torch.arange(rows).chunk(world)] + [0] * (world - len(torch.arange(rows).chunk(world)))
    back = torch.cat([p["indices"].long() + chunk_rows(rows, world, r)[0] * cols for r, p in enumerate(pieces)])
    assert torch.equal(back, indices.long())
    for key in ("exp_avg", "exp_avg_sq", "origin_values"):
        assert torch.equal(torch.cat([p[key] for p in pieces]), state[key]), key
    for rank, piece in enumerate(pieces):
        start, end = chunk_rows(rows, world, rank)
        assert piece["origin_indices"] is piece["indices"] and piece["step"] == 2
        assert piece["indices"].numel() == 0 or int(piece["indices"].max()) < (end - start) * cols
        assert torch.equal(whole[start:end].reshape(-1)[piece["indices"].long()], piece["origin_values"])


def test_a_sharding_other_than_rows_is_refused_by_name():
    """HSDP (a 2-D mesh) or tensor parallelism (Shard(1)) would put other entries on a process than the engine
    assumes: stopped with the layout and what to use instead."""
    from torch.distributed.tensor import Shard

    from ftplugins.errors import FtpluginsError
    from ftplugins.sparse.shards import row_range

    whole = torch.zeros(4, 4)
    with pytest.raises(FtpluginsError, match=r"model.w has placements \(Shard\(dim=1\),\).*Use plain FSDP2"):
        row_range(_FakeShard(whole, 2, 0, placements=(Shard(1),)), "model.w")
    with pytest.raises(FtpluginsError, match=r"2-D mesh \(HSDP"):
        row_range(_FakeShard(whole, 2, 0, mesh_ndim=2), "model.w")
    assert row_range(_FakeShard(whole, 2, 1), "model.w") == (2, 4, 4)
