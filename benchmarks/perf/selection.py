"""``python -m benchmarks.perf.selection``: the data-selection engine against the libraries it stands on.

Side by side in one process, reported as ratios (not timed tests):

* kMQ: our selection step after embedding (faiss k-means + per-cluster quotas + draws, ``select_kmeans``' code
  path) against faiss k-means alone on the same matrix (N x 384, 5% budget);
* embedding throughput: ``ftplugins.data.embed`` (MiniLM, no cache) against a plain batched ``AutoModel`` forward
  with mean pooling at the same batch size;
* OT: our chunked Sinkhorn against POT's ``ot.sinkhorn(method="sinkhorn_log")`` at the same epsilon and tolerance
  (a size POT can hold; our tiles kept, the default), and our peak memory with no tile kept (``keep_bytes=0``,
  memory O((N + M) d + chunk^2)) at a larger size;
* influence: seconds per 10k rows of ``select_influence`` scoring (tiny model), memory above the start.

Writes ``selection.json`` and ``selection.md`` to ``--out``. ``--smoke``: tiny sizes (what CI can afford).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import common

FULL = {"kmeans_rows": 200_000, "clusters": 1024, "embed_rows": 2048, "ot": (20_000, 2_000), "ot_big": (100_000, 5_000),
        "influence_rows": 512}
SMOKE = {"kmeans_rows": 4_000, "clusters": 32, "embed_rows": 64, "ot": (1_000, 100), "ot_big": (4_000, 400),
         "influence_rows": 16}


def blobs(rows: int, dim: int = 384, centres: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = c[rng.integers(0, centres, rows)] + 0.5 * rng.normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


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


def bench_ot(pool: int, target: int, big: tuple[int, int]) -> dict:
    import ot
    import torch

    from ftplugins.data.sinkhorn import sinkhorn

    x, y = blobs(pool, seed=1), blobs(target, seed=2)
    a, b = np.full(pool, 1 / pool), np.full(target, 1 / target)
    t_pot, _ = timed(lambda: ot.sinkhorn(a, b, ot.dist(x, y), 0.1, method="sinkhorn_log", numItermax=1000,
                                         stopThr=1e-6))
    t_ours, _ = timed(lambda: sinkhorn(torch.from_numpy(x), torch.from_numpy(y), reg=0.1, max_iter=1000, tol=1e-6))
    xb, yb = torch.from_numpy(blobs(big[0], seed=3)), torch.from_numpy(blobs(big[1], seed=4))
    peak = common.PeakMemory("cpu")
    peak.reset()
    t_big, result = timed(lambda: sinkhorn(xb, yb, reg=0.1, max_iter=1000, tol=1e-6, chunk=4096, keep_bytes=0))
    return {"pot": {"pool": pool, "target": target, "pot_s": t_pot, "ours_s": t_ours,
                    "ratio": common.ratio(t_ours, t_pot)},
            "big": {"pool": big[0], "target": big[1], "dim": 384, "s": t_big, "iterations": result.iterations + 1,
                    "peak_bytes_above_inputs": peak.peak_above_base(),
                    "cost_matrix_bytes_if_whole": float(big[0]) * big[1] * 4}}


def bench_influence(rows: int) -> dict:
    import torch

    from ftplugins.data import select
    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    torch.set_num_threads(1)
    pool = arithmetic_dataset(rows, seed=0)
    peak = common.PeakMemory("cpu")
    peak.reset()
    seconds, _ = timed(lambda: select("influence", pool, max(1, rows // 10), model=model, tokenizer=tokenizer,
                                      damping=0.3, strata=min(50, rows // 2), cache_dir="none", show_progress=False))
    return {"rows": rows, "model": "tiny", "s": seconds, "s_per_10k_rows": seconds / rows * 10_000,
            "peak_bytes": peak.peak_above_base()}


def markdown(result: dict) -> str:
    k, e, o, i = (result[name] for name in ("kmeans", "embedding", "ot", "influence"))
    rows = [
        ["kMQ step after embedding vs faiss k-means alone", f"{k['rows']:,} x 384, K={k['clusters']}",
         f"{common.fmt(k['ours_s'])} s vs {common.fmt(k['faiss_s'])} s", common.fmt(k["ratio"], ".2f") + "x"],
        ["embedding (MiniLM) vs plain AutoModel forward", f"{e['rows']:,} rows, batch {e['batch']}",
         f"{common.fmt(e['ours_rows_per_s'])} vs {common.fmt(e['plain_rows_per_s'])} rows/s",
         common.fmt(e["ratio"], ".2f") + "x time"],
        ["chunked Sinkhorn vs POT sinkhorn_log (eps 0.1, tol 1e-6)", f"{o['pot']['pool']:,} x {o['pot']['target']:,}",
         f"{common.fmt(o['pot']['ours_s'])} s vs {common.fmt(o['pot']['pot_s'])} s",
         common.fmt(o["pot"]["ratio"], ".2f") + "x"],
        ["chunked Sinkhorn, peak memory above inputs", f"{o['big']['pool']:,} x {o['big']['target']:,} x 384",
         f"{common.fmt((o['big']['peak_bytes_above_inputs'] or 0) / 2**20)} MiB in {common.fmt(o['big']['s'])} s "
         f"(whole cost matrix: {common.fmt(o['big']['cost_matrix_bytes_if_whole'] / 2**20)} MiB)", ""],
        ["select_influence scoring (tiny model)", f"{i['rows']} rows",
         f"{common.fmt(i['s_per_10k_rows'])} s / 10k rows", ""],
    ]
    return common.markdown_table(["measurement", "size", "result", "ratio"], rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.selection", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/selection-cpu)")
    parser.add_argument("--kmeans-iterations", type=int, default=20)
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
        "influence": bench_influence(sizes["influence_rows"]),
    }
    result["elapsed_s"] = time.perf_counter() - started
    common.write_json(os.path.join(out, "selection.json"), result)
    common.write_text(os.path.join(out, "selection.md"), markdown(result))
    print(markdown(result))
    print(f"wrote {out}/selection.json, selection.md")
    return result


if __name__ == "__main__":
    main()
