"""The data-selection engine: cached resumable embeddings, faiss k-means, chunked Sinkhorn (against POT),
LiSSA (against an explicit inverse Hessian), and the samplers' invariants."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ftplugins.data import sinkhorn as sinkhorn_module
from ftplugins.data.embed import ModelEncoder, SentenceEncoder, embed
from ftplugins.data.extras import require
from ftplugins.data.influence import grads_only_for, hvp, lissa, mean_gradient, row_losses, select_parameters
from ftplugins.data.kmeans import kmeans
from ftplugins.data.sampling import coverage_sample, proportional_quotas, weighted_sample
from ftplugins.data.sinkhorn import calibrated_gradient, sinkhorn
from ftplugins.data.source import iter_batches, load_pool
from ftplugins.errors import MissingExtraError
from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer



@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder("minilm", text_field="prompt", max_length=32)


class Counting:
    """Wraps an encoder: counts the rows it encodes and can be interrupted after ``fail_after`` calls."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls, self.rows = inner, fail_after, 0, 0
        self.columns, self.pooling, self.max_length = inner.columns, inner.pooling, inner.max_length

    def fingerprint(self):
        return self.inner.fingerprint()

    def encode(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.rows += len(next(iter(batch.values())))
        return self.inner.encode(batch)


POOL = arithmetic_dataset(24, seed=3)
EMBED = {"batch_size": 4, "chunk_rows": 8, "show_progress": False}


def test_minilm_embeddings_are_normalised_and_semantic(minilm):
    data = load_pool([{"prompt": "2+2=?"}, {"prompt": "3+5=?"}, {"prompt": "The cat sat on the warm mat."}])
    vectors = embed(data, minilm, None, **EMBED).vectors
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_second_run_does_no_embedding_work(minilm, tmp_path):
    first = Counting(minilm)
    a = embed(POOL, first, str(tmp_path), **EMBED)
    assert first.rows == len(POOL)
    second = Counting(minilm)
    b = embed(POOL, second, str(tmp_path), **EMBED)
    assert second.calls == 0 and b.key == a.key
    assert np.array_equal(a.vectors, b.vectors)


def test_resumed_run_redoes_no_finished_chunk_and_matches(minilm, tmp_path):
    reference = embed(POOL, minilm, None, **EMBED).vectors
    interrupted = Counting(minilm, fail_after=5)  # chunks of 2 batches: 2 chunks done, the third half done
    with pytest.raises(KeyboardInterrupt):
        embed(POOL, interrupted, str(tmp_path), **EMBED)
    resumed = Counting(minilm)
    vectors = embed(POOL, resumed, str(tmp_path), **EMBED).vectors
    assert resumed.rows == len(POOL) - 16  # only the unfinished third chunk
    assert np.array_equal(vectors, reference)


def test_cache_key_follows_data_and_text_field(minilm, tmp_path):
    base = embed(POOL, minilm, str(tmp_path), **EMBED).key
    other_field = SentenceEncoder("minilm", text_field="completion", max_length=32)
    assert embed(POOL, other_field, str(tmp_path), **EMBED).key != base
    changed = POOL.map(lambda row, i: {"prompt": row["prompt"] + (" " if i == 5 else "")}, with_indices=True)
    assert embed(changed, minilm, str(tmp_path), **EMBED).key != base


def test_model_embedding_is_the_mean_over_response_tokens():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    encoder = ModelEncoder(model, tokenizer, ["prompt", "completion"], max_length=64)
    rows = arithmetic_dataset(3, seed=1)
    got = embed(rows, encoder, None, **EMBED).vectors
    from ftplugins.data.tokens import row_tokens

    ids, start = row_tokens(tokenizer, rows.select_columns(["prompt", "completion"])[1], 64)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    assert np.allclose(got[1], hidden[start:].mean(0).numpy(), atol=1e-5)


def test_pool_is_read_in_batches():
    sizes = [len(batch["prompt"]) for batch in iter_batches(POOL, ["prompt"], 5)]
    assert sizes == [5, 5, 5, 5, 4]


def test_kmeans_is_seeded_and_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    x = np.concatenate([c + rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    _, first = kmeans(x, 4, seed=1, iterations=20, restarts=2)
    _, again = kmeans(x, 4, seed=1, iterations=20, restarts=2)
    assert np.array_equal(first, again)
    for blob in range(4):
        assert len(set(first[blob * 30:(blob + 1) * 30])) == 1  # one cluster per blob
    assert len(set(first)) == 4


def test_missing_faiss_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError, match=r'pip install "ftplugins\[data\]"') as err:
        require("faiss")
    assert "\n" not in str(err.value)


def test_listing_imports_neither_faiss_pot_nor_torch():
    code = ("import sys, ftplugins.cli as c; c.build_parser(); "
            "import ftplugins.methods.select_kmeans, ftplugins.methods.select_ot, ftplugins.methods.select_influence; "
            "print(sorted(m for m in ('faiss', 'ot', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- optimal transport -------------------------------------------------------------------------------------


def clouds(n=90, m=25, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64) + 0.7, dim=1)
    return x, y


@pytest.mark.parametrize("chunk", [7, 32, 4096])
def test_chunked_sinkhorn_matches_pot(chunk):
    ot = pytest.importorskip("ot")
    x, y = clouds()
    ours = sinkhorn(x, y, reg=0.1, max_iter=3000, tol=1e-10, chunk=chunk)
    cost = ot.dist(x.numpy(), y.numpy())
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    plan, log = ot.sinkhorn(a, b, cost, 0.1, method="sinkhorn_log", numItermax=3000, stopThr=1e-10, log=True)
    # Stated tolerance (float64): potentials within 1e-8 (absolute), transport cost within 1e-9 (relative).
    assert np.abs(ours.f.numpy() - 0.1 * log["log_u"]).max() < 1e-8
    assert np.abs(ours.g.numpy() - 0.1 * log["log_v"]).max() < 1e-8
    assert abs(ours.cost - float((plan * cost).sum())) < 1e-9 * float((plan * cost).sum())


def test_sinkhorn_potentials_satisfy_the_marginals():
    x, y = clouds(seed=1)
    result = sinkhorn(x, y, reg=0.1, max_iter=3000, tol=1e-12, chunk=16)
    cost = torch.cdist(x, y) ** 2
    plan = torch.exp(result.log_u[:, None] - cost / 0.1 + result.log_v[None, :])
    assert torch.allclose(plan.sum(1), torch.full((len(x),), 1 / len(x), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(plan.sum(0), torch.full((len(y),), 1 / len(y), dtype=torch.float64), atol=1e-11)


def test_sinkhorn_never_builds_a_tile_larger_than_the_chunk(monkeypatch):
    seen = []
    real = sinkhorn_module._cost_tile

    def recording(x, y, x_sq, y_sq):
        seen.append((x.shape[0], y.shape[0]))
        return real(x, y, x_sq, y_sq)

    monkeypatch.setattr(sinkhorn_module, "_cost_tile", recording)
    x, y = clouds(n=70, m=40)
    strict = sinkhorn(x, y, reg=0.1, max_iter=20, chunk=16, keep_bytes=0)
    assert max(r for r, _ in seen) <= 16 and max(c for _, c in seen) <= 16
    recomputed, seen[:] = len(seen), []
    kept = sinkhorn(x, y, reg=0.1, max_iter=20, chunk=16)  # tiles kept: each computed once, same answer
    assert len(seen) == 5 * 3 < recomputed
    assert torch.equal(kept.log_u, strict.log_u) and kept.cost == strict.cost


def test_calibrated_gradient_sums_to_zero_and_ignores_constants():
    f = torch.tensor([0.3, -1.2, 2.0, 0.1], dtype=torch.float64)
    g = calibrated_gradient(f)
    assert abs(float(g.sum())) < 1e-12
    assert torch.allclose(calibrated_gradient(f + 5.0), g)
    assert torch.allclose(g, torch.stack([f[i] - (f.sum() - f[i]) / 3 for i in range(4)]))


# --- influence ------------------------------------------------------------------------------------------------


def test_lissa_matches_an_explicit_inverse_hessian():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    rows = [dict(r) for r in arithmetic_dataset(6, seed=2).select_columns(["prompt", "completion"])]
    ((name, weight),) = select_parameters(model, r"^model\.norm\.weight$")

    def mean_loss():
        return row_losses(model, tokenizer, rows, 64).mean()

    with grads_only_for(model, [weight]):
        v = mean_gradient(lambda idx: row_losses(model, tokenizer, [rows[i] for i in idx], 64), [weight], 6, 4)
        assert torch.allclose(v, torch.autograd.grad(mean_loss(), [weight])[0], atol=1e-6)
        hessian = torch.autograd.functional.hessian(
            lambda w: _mean_nll(model, name, w, tokenizer, rows), weight.detach().clone()).double()
        # Scale above the spectrum and damping * scale above any negative curvature: the recursion converges.
        scale = 2.0 * float(torch.linalg.eigvalsh(hessian).abs().max()) + 1e-3
        damping = 0.5
        h = lissa(lambda vec, step: hvp(mean_loss(), [weight], vec), v.detach(), 200, damping, scale)
    expected = torch.linalg.solve(hessian + damping * scale * torch.eye(len(v), dtype=torch.float64),
                                  v.detach().double())
    assert torch.allclose(h.double(), expected, rtol=1e-4, atol=1e-6)


def _mean_nll(model, name, weight, tokenizer, rows):
    from ftplugins.data.tokens import pad_batch, row_tokens

    ids, attention, response = pad_batch([row_tokens(tokenizer, r, 64) for r in rows], tokenizer.pad_token_id or 0)
    logits = torch.func.functional_call(model, {name: weight}, kwargs={"input_ids": ids, "attention_mask": attention})
    logits = logits.logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    w = response[:, 1:].float()
    return ((nll * w).sum(1) / w.sum(1)).mean()


# --- samplers --------------------------------------------------------------------------------------------------


def test_proportional_quotas_sum_to_the_budget_and_follow_sizes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(1, 50, size=rng.integers(1, 12))
        budget = int(rng.integers(1, sizes.sum() + 1))
        quotas = proportional_quotas(sizes, budget)
        assert quotas.sum() == budget
        assert np.all(quotas <= sizes)
        assert np.all(np.abs(quotas - budget * sizes / sizes.sum()) < 1)


def test_weighted_sample_draws_distinct_rows_and_favours_high_scores():
    rng = np.random.default_rng(0)
    scores = np.array([0.0] * 10 + [50.0] * 3)
    picked = weighted_sample(scores, 3, rng)
    assert sorted(picked.tolist()) == [10, 11, 12]
    assert len(set(weighted_sample(np.zeros(20), 20, rng).tolist())) == 20


def test_coverage_sampling_takes_from_every_stratum():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0, 1, 300), rng.normal(6, 0.3, 20)])
    chosen, report = coverage_sample(scores, 60, strata=5, hard_prune=0.1, rng=np.random.default_rng(0))
    assert len(chosen) == 60 and len(set(chosen.tolist())) == 60
    assert set(report["per_stratum"]) == set(report["stratum_sizes"])  # every non-empty stratum ...
    assert all(count > 0 for count in report["per_stratum"].values())  # ... gives rows
    pruned = np.argsort(-scores, kind="stable")[:32]
    assert not set(pruned.tolist()) & set(chosen.tolist())


def test_coverage_with_one_stratum_and_no_pruning_is_uniform_sampling():
    scores = np.random.default_rng(2).normal(size=50)
    chosen, _ = coverage_sample(scores, 12, strata=1, hard_prune=0.0, rng=np.random.default_rng(7))
    expected = np.sort(np.random.default_rng(7).choice(np.arange(50), size=12, replace=False))
    assert np.array_equal(chosen, expected)


def test_gradient_features_are_the_projected_row_gradients():
    from ftplugins.data.gradients import GradientEncoder
    from ftplugins.data.influence import flat

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    rows = arithmetic_dataset(4, seed=5).select_columns(["prompt", "completion"])
    encoder = GradientEncoder(model, tokenizer, ["prompt", "completion"], dim=4096, seed=3, max_length=48)
    features = embed(rows, encoder, None, **EMBED).vectors
    assert features.shape == (4, 4096)
    params = encoder.params
    with grads_only_for(model, params):
        gradient = flat(torch.autograd.grad(row_losses(model, tokenizer, [rows[2]], 48).sum(), params))
    assert np.allclose(features[2], encoder.project(gradient).numpy(), atol=1e-6)
    # CountSketch keeps norms (in expectation; within 10% at this dimension) and is seeded.
    assert abs(np.linalg.norm(features[2]) / float(gradient.norm()) - 1) < 0.1
    again = GradientEncoder(model, tokenizer, ["prompt", "completion"], dim=4096, seed=3, max_length=48)
    assert np.array_equal(embed(rows, again, None, **EMBED).vectors, features)


def test_squared_norms_per_chunk_equal_the_whole_computation():
    from ftplugins.data.sinkhorn import squared_norms

    x = torch.randn(103, 7, generator=torch.Generator().manual_seed(0))
    for chunk in (1, 10, 103, 500):
        assert torch.equal(squared_norms(x, chunk), (x * x).sum(1))
