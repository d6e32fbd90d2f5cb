"""Options of select_ot (GOT-D). Defaults: the paper's entropic regularisation 0.1 over a small sentence
encoder's embeddings; the Sinkhorn tolerance and chunk size are ours."""

from ftplugins.data.options import selection_options


def _check(values):
    if values.epsilon <= 0:
        raise ValueError(f"--select_ot_epsilon {values.epsilon}: expected a value > 0")
    if values.max_iter < 1 or values.chunk < 1 or values.gradient_dim < 1 or values.keep_mb < 0:
        raise ValueError("--select_ot_max_iter, --select_ot_chunk, --select_ot_gradient_dim: expected integers >= 1; "
                         "--select_ot_keep_mb >= 0")


SelectOtOptions = selection_options("select_ot", [
    ("target", str, "", "The target set (rows like the task you fine-tune for): a .jsonl/.json/.csv/.parquet file, "
                        "a save_to_disk folder or a Hub dataset id. It needs the pool's text column."),
    ("epsilon", float, 0.1, "Entropic regularisation of the OT problem (Sinkhorn reg) on squared Euclidean cost."),
    ("max_iter", int, 1000, "Sinkhorn iterations at most."),
    ("tol", float, 1e-6, "Stop when the target-marginal violation (L2) falls below this (checked every 10 steps)."),
    ("chunk", int, 4096, "Cost-matrix tile side: memory is O((pool + target) * dim + chunk^2)."),
    ("keep_mb", int, 1024, "Cost tiles kept in memory between Sinkhorn iterations (MiB); beyond it tiles are "
                           "recomputed. 0: memory O((pool + target) * dim + chunk^2) strictly."),
    ("gradient_dim", int, 8192, "Dimension of the projected gradient features (encoder gradients)."),
], check=_check, doc="Options of select_ot (GOT-D: OT dual potentials toward a target set).")
