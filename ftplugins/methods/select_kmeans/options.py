"""Options of select_kmeans (Diversify and Conquer's kMQ). Defaults: the paper's faiss settings (300 iterations,
5 restarts); K defaults to sqrt(pool) capped at the paper's 1024 (ours: the paper fixes K per pool size)."""

from ftplugins.data.options import selection_options

#: What a round of the plugin's iterative kMQ trains on (``select_kmeans_round_rows``).
ROUND_ROWS = ("growing", "slice")


def _check(values):
    if values.clusters < 0:
        raise ValueError(f"--select_kmeans_clusters {values.clusters}: expected 0 (auto) or a count >= 1")
    if values.temperature <= 0:
        raise ValueError(f"--select_kmeans_temperature {values.temperature}: expected a value > 0")
    if values.iterations < 1 or values.restarts < 1:
        raise ValueError("--select_kmeans_iterations and --select_kmeans_restarts: expected integers >= 1")
    if values.rounds < 1:
        raise ValueError(f"--select_kmeans_rounds {values.rounds}: expected 1 (single-shot kMQ) or more rounds")
    if values.holdout < 0:
        raise ValueError(f"--select_kmeans_holdout {values.holdout}: expected 0 (score the selected rows) or more")
    if values.round_rows not in ROUND_ROWS:
        raise ValueError(f"--select_kmeans_round_rows {values.round_rows!r}: expected one of {', '.join(ROUND_ROWS)}")
    if not values.round_score.strip():
        raise ValueError("--select_kmeans_round_score '': expected nll or 'pkg.mod:func'")
    if not values.quality.strip():
        raise ValueError("--select_kmeans_quality '': expected auto, none, perplexity or 'pkg.mod:func'")


SelectKmeansOptions = selection_options("select_kmeans", [
    ("clusters", int, 0, "k-means clusters K; 0: sqrt(pool rows), at most 1024."),
    ("iterations", int, 300, "k-means iterations (faiss niter)."),
    ("restarts", int, 5, "k-means restarts (faiss nredo); the best objective wins."),
    ("quality", str, "auto", "Quality score that weights draws within a cluster: perplexity (lower perplexity, "
                             "likelier; needs the model), none (uniform), auto (perplexity when a model is given), "
                             "or 'pkg.mod:func' taking a column batch (dict of lists) and returning one float per row "
                             "(higher is better)."),
    ("temperature", float, 1.0, "Draws within a cluster have probability ~ softmax(quality / temperature); "
                                "iterative rounds draw clusters ~ softmax(mean score / temperature)."),
    ("rounds", int, 1, "1: single-shot kMQ. R > 1: iterative kMQ, R slices of budget // R rows each; the plugin "
                       "trains num_train_epochs // R epochs per round, then scores the model and draws the next "
                       "slice from the rows not yet selected."),
    ("round_rows", str, "growing", "Iterative kMQ in the plugin, what a round's epochs train on: growing (every "
                                   "row selected so far, cycled to the budget's length, as the paper retrains on "
                                   "the growing selection: the last round trains on the whole budget, and the run "
                                   "costs what single-shot kMQ does at the same epochs) or slice (the round's new "
                                   "slice only, epochs of budget // R rows)."),
    ("holdout", int, 4, "Iterative kMQ: rows held out of every cluster (never selected, at most half of it) whose "
                        "scores after a round reweight the clusters; 0: score the rows selected so far (the "
                        "paper's d_i)."),
    ("round_score", str, "nll", "Iterative kMQ: how far the model still is from a row's answer after a round, "
                                "higher = farther: nll (mean response-token NLL) or 'pkg.mod:func' taking (model, "
                                "tokenizer, rows) and returning one float per row."),
], check=_check, doc="Options of select_kmeans (kMQ: k-means, then quality-weighted draws per cluster).")
