"""Options of select_kmeans (Diversify and Conquer's kMQ). Defaults: the paper's faiss settings (300 iterations,
5 restarts); K defaults to sqrt(pool) capped at the paper's 1024 (ours: the paper fixes K per pool size)."""

from ftplugins.data.options import selection_options


def _check(values):
    if values.clusters < 0:
        raise ValueError(f"--select_kmeans_clusters {values.clusters}: expected 0 (auto) or a count >= 1")
    if values.temperature <= 0:
        raise ValueError(f"--select_kmeans_temperature {values.temperature}: expected a value > 0")
    if values.iterations < 1 or values.restarts < 1:
        raise ValueError("--select_kmeans_iterations and --select_kmeans_restarts: expected integers >= 1")
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
    ("temperature", float, 1.0, "Draws within a cluster have probability ~ softmax(quality / temperature)."),
], check=_check, doc="Options of select_kmeans (kMQ: k-means, then quality-weighted draws per cluster).")
