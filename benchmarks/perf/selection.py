"""``python -m benchmarks.perf.selection``: the data-selection engine against the libraries it stands on.

Side by side in one process, reported as ratios (not timed tests):

* kMQ: our selection step after embedding (faiss k-means + per-cluster quotas + draws, ``select_kmeans``' code
  path) against faiss k-means alone on the same matrix (N x 384, 5% budget);
* embedding throughput: ``ftplugins.data.embed`` (MiniLM, no cache) against a plain batched ``AutoModel`` forward
  with mean pooling at the same batch size;
* OT: our chunked Sinkhorn against POT's ``ot.sinkhorn(method="sinkhorn_log")`` at the same epsilon and tolerance
  (a size POT can hold; our tiles kept, the default), and our peak memory with no tile kept (``keep_bytes=0``,
  memory O((N + M) d + chunk^2)) at the larger sizes (100k x 5k, 1M candidates): one Sinkhorn iteration each (its
  two half-steps, the marginal check and the cost pass), timed, with the extrapolation to 5M candidates (time and
  input memory linear in N at a fixed target set; iterations to converge as at the POT size);
* influence: seconds per 10k rows of ``select_influence`` (tiny model at two pool sizes: memory flat in the pool;
  the 85M shape at a reduced LiSSA depth, stated), memory above the start.

Writes ``selection.json`` and ``selection.md`` to ``--out``. ``--smoke``: tiny sizes (what CI can afford).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import common

FULL = {"kmeans_rows": 200_000, "clusters": 1024, "embed_rows": 2048, "ot": (20_000, 2_000),
        "ot_big": [(100_000, 5_000), (1_000_000, 1_000)], "influence_rows": [256, 1024], "influence_85m_rows": 32,
        "influence_85m_depth": 5}
SMOKE = {"kmeans_rows": 4_000, "clusters": 32, "embed_rows": 64, "ot": (1_000, 100), "ot_big": [(4_000, 400)],
         "influence_rows": [16, 32], "influence_85m_rows": 0, "influence_85m_depth": 1}
EXTRAPOLATE_TO = 5_000_000


def blobs(rows: int, dim: int = 384, centres: int = 64, seed: int = 0, block: int = 100_000) -> np.ndarray:
    """Unit vectors around ``centres`` random centres, float32, built in blocks (a million rows fit)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        x = c[rng.integers(0, centres, n)] + 0.5 * rng.normal(size=(n, dim))
        out[start:start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_kmeans(rows: int, clusters: int, iterations: int) -> dict:
    import faiss

    from ftplugins.data.kmeans import kmeans
    from ftplugins.data.sampling import proportional_quotas, weighted_sample

    x = blobs(rows)
    budget = rows // 20

    def faiss_alone():
        km = faiss.Kmeans(x.shape[1], clusters, niter=iterations, nredo=1, seed=0, verbose=False,
                          min_points_per_centroid=1)
        km.train(x)
        return km.index.search(x, 1)

    def ours():
        _, assignment = kmeans(x, clusters, seed=0, iterations=iterations, restarts=1)
        sizes = np.bincount(assignment, minlength=clusters)
        quotas = proportional_quotas(sizes, budget)
        rng, scores = np.random.default_rng(0), np.zeros(rows)
        order = np.argsort(assignment, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [order[bounds[k]:bounds[k + 1]][weighted_sample(scores[:sizes[k]], int(quotas[k]), rng)]
                for k in range(clusters)]

    t_faiss, _ = timed(faiss_alone)
    t_ours, _ = timed(ours)
    return {"rows": rows, "dim": 384, "clusters": clusters, "iterations": iterations, "budget": budget,
            "faiss_s": t_faiss, "ours_s": t_ours, "ratio": common.ratio(t_ours, t_faiss)}


def bench_embedding(rows: int, batch: int = 64) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ftplugins.data.embed import SentenceEncoder, embed
    from ftplugins.data.source import load_pool
    from ftplugins.testing import minilm_path

    texts = [f"Question {i}: what is {i % 97} plus {i % 13}, and why does it matter?" for i in range(rows)]
    pool = load_pool([{"text": t} for t in texts])
    encoder = SentenceEncoder("minilm", "text", 128)
    encoder.model  # load outside the timing
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path()).eval()

    def plain():
        out = []
        with torch.inference_mode():
            for i in range(0, rows, batch):
                inputs = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")
                hidden = model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    t_plain, _ = timed(plain)
    t_ours, _ = timed(lambda: embed(pool, encoder, None, batch_size=batch, chunk_rows=1024, show_progress=False))
    return {"rows": rows, "batch": batch, "plain_rows_per_s": rows / t_plain, "ours_rows_per_s": rows / t_ours,
            "ratio": common.ratio(t_ours, t_plain)}


def bench_ot(pool: int, target: int, big: list[tuple[int, int]]) -> dict:
    import ot
    import torch

    from ftplugins.data.sinkhorn import sinkhorn

    x, y = blobs(pool, seed=1), blobs(target, seed=2)
    a, b = np.full(pool, 1 / pool), np.full(target, 1 / target)
    t_pot, (_, log) = timed(lambda: ot.sinkhorn(a, b, ot.dist(x, y), 0.1, method="sinkhorn_log", numItermax=1000,
                                                stopThr=1e-6, log=True))
    t_ours, ours = timed(lambda: sinkhorn(torch.from_numpy(x), torch.from_numpy(y), reg=0.1, max_iter=1000, tol=1e-6))
    del x, y, a, b
    rows = [bench_ot_big(n, m, converge_iterations=ours.iterations + 1) for n, m in big]
    return {"pot": {"pool": pool, "target": target, "pot_s": t_pot, "ours_s": t_ours,
                    "pot_iterations": int(log.get("niter", 0)), "ours_iterations": ours.iterations + 1,
                    "ratio": common.ratio(t_ours, t_pot)},
            "big": rows}


def bench_ot_big(n: int, m: int, converge_iterations: int) -> dict:
    """One Sinkhorn iteration with no tile kept: peak memory above the inputs, and seconds (with the extrapolation
    to ``EXTRAPOLATE_TO`` candidates at the POT size's iteration count)."""
    import torch

    from ftplugins.data.sinkhorn import sinkhorn

    xb, yb = torch.from_numpy(blobs(n, seed=3)), torch.from_numpy(blobs(m, seed=4))
    inputs = (xb.numel() + yb.numel()) * 4
    peak = common.PeakMemory("cpu")
    peak.reset()
    seconds, _ = timed(lambda: sinkhorn(xb, yb, reg=0.1, max_iter=1, tol=1e-6, chunk=4096, keep_bytes=0))
    above = peak.peak_above_base()
    del xb, yb
    factor = EXTRAPOLATE_TO / n
    # Row passes over the cost tiles: T iterations take 2 half-steps each, a marginal check every 10 and one cost
    # pass; the timed single iteration took 4 (2 half-steps, 1 check, 1 cost pass).
    passes = 2 * converge_iterations + (converge_iterations - 1) // 10 + 1 + 1
    return {"pool": n, "target": m, "dim": 384, "iterations": 1, "s_per_iteration": seconds,
            "peak_bytes_above_inputs": above, "input_bytes": inputs,
            "cost_matrix_bytes_if_whole": float(n) * m * 4,
            "converge_iterations_assumed": converge_iterations,
            "extrapolated": {"pool": EXTRAPOLATE_TO, "target": m, "s": seconds / 4 * passes * factor,
                             "input_bytes": n * 384 * 4 * factor + m * 384 * 4}}


def bench_influence(rows: list[int], rows_85m: int, depth_85m: int) -> dict:
    import torch

    from ftplugins.data import select
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    torch.set_num_threads(1)

    def one(model, n, **options):
        pool = arithmetic_dataset(n, seed=0)
        peak = common.PeakMemory("cpu")
        peak.reset()
        seconds, _ = timed(lambda: select("influence", pool, max(1, n // 10), model=model, tokenizer=tiny_tokenizer(),
                                          damping=0.3, strata=min(50, max(1, n // 2)), cache_dir="none",
                                          show_progress=False, **options))
        return {"rows": n, "s": seconds, "s_per_10k_rows": seconds / n * 10_000, "peak_bytes": peak.peak_above_base(),
                **options}

    result = {"tiny": [one(tiny_llama(), n) for n in rows]}
    if rows_85m:
        from transformers import LlamaConfig, LlamaForCausalLM

        from benchmarks.perf.harness import MODELS

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tiny_tokenizer()), **MODELS["85m"])
        model = LlamaForCausalLM(config)
        result["85m"] = {**one(model, rows_85m, depth=depth_85m),
                         "parameters": sum(p.numel() for p in model.parameters())}
    return result


def markdown(result: dict) -> str:
    k, e, o, i = (result[name] for name in ("kmeans", "embedding", "ot", "influence"))
    mib = 2 ** 20
    rows = [
        ["kMQ step after embedding vs faiss k-means alone", f"{k['rows']:,} x 384, K={k['clusters']}",
         f"{common.fmt(k['ours_s'])} s vs {common.fmt(k['faiss_s'])} s", common.fmt(k["ratio"], ".2f") + "x"],
        ["embedding (MiniLM) vs plain AutoModel forward", f"{e['rows']:,} rows, batch {e['batch']}",
         f"{common.fmt(e['ours_rows_per_s'])} vs {common.fmt(e['plain_rows_per_s'])} rows/s",
         common.fmt(e["ratio"], ".2f") + "x time"],
        ["chunked Sinkhorn vs POT sinkhorn_log (eps 0.1, tol 1e-6)", f"{o['pot']['pool']:,} x {o['pot']['target']:,}",
         f"{common.fmt(o['pot']['ours_s'])} s vs {common.fmt(o['pot']['pot_s'])} s "
         f"({o['pot'].get('ours_iterations', '?')} vs {o['pot'].get('pot_iterations', '?')} iterations)",
         common.fmt(o["pot"]["ratio"], ".2f") + "x"],
    ]
    for big in o["big"] if isinstance(o["big"], list) else [o["big"]]:
        inputs = big.get("input_bytes", 0)
        seconds = common.fmt(big.get("s_per_iteration", big.get("s")))
        peak = common.fmt((inputs + (big["peak_bytes_above_inputs"] or 0)) / mib)
        whole = common.fmt(big["cost_matrix_bytes_if_whole"] / mib)
        rows.append(["chunked Sinkhorn, no tile kept: one iteration, peak memory",
                     f"{big['pool']:,} x {big['target']:,} x 384",
                     f"{seconds} s; peak {peak} MiB (inputs {common.fmt(inputs / mib)} MiB; "
                     f"whole cost matrix: {whole} MiB)", ""])
        if "extrapolated" in big:
            x = big["extrapolated"]
            rows.append([f"extrapolated to {x['pool']:,} candidates ({big['converge_iterations_assumed']} iterations)",
                         f"{x['pool']:,} x {x['target']:,} x 384",
                         f"~{common.fmt(x['s'] / 60)} min; inputs {common.fmt(x['input_bytes'] / 2 ** 30)} GiB", ""])
    for name, runs in i.items():
        for run in runs if isinstance(runs, list) else [runs]:
            depth = f", LiSSA depth {run['depth']}" if "depth" in run else ""
            peak = common.fmt((run["peak_bytes"] or 0) / mib)
            rows.append([f"select_influence ({name} model{depth})", f"{run['rows']:,} rows",
                         f"{common.fmt(run['s_per_10k_rows'])} s / 10k rows; peak {peak} MiB", ""])
    return common.markdown_table(["measurement", "size", "result", "ratio"], rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.selection", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/selection-cpu)")
    parser.add_argument("--kmeans-iterations", type=int, default=10)
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise; --smoke runs are never committed and need no flag)")
    args = parser.parse_args(argv)
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    common.offline_environment()
    common.quiet_warnings()
    sizes = SMOKE if args.smoke else FULL
    out = args.out or os.path.join(common.RESULTS_DIR, "selection-cpu")
    started = time.perf_counter()
    result = {
        "harness": "perf.selection",
        "config": {"sizes": sizes, "smoke": args.smoke, "kmeans_iterations": args.kmeans_iterations},
        "machine": common.machine_info("cpu", packages=("faiss-cpu", "pot", "torch"), dirty=dirty),
        "kmeans": bench_kmeans(sizes["kmeans_rows"], sizes["clusters"], args.kmeans_iterations),
        "embedding": bench_embedding(sizes["embed_rows"]),
        "ot": bench_ot(*sizes["ot"], sizes["ot_big"]),
        "influence": bench_influence(sizes["influence_rows"], sizes["influence_85m_rows"],
                                     sizes["influence_85m_depth"]),
    }
    result["elapsed_s"] = time.perf_counter() - started
    return common.publish(out, "selection", result, markdown(result))


if __name__ == "__main__":
    main()
