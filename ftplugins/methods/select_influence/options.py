"""Options of select_influence (DEALRec). Defaults: the issue's 50 strata, DEALRec's 10% hard pruning and a
lambda in its 0.3-1.0 range (0.5, ours); LiSSA's damping 0.01 and scale 25 are Koh & Liang's, the depth 100 is
ours (tiny surrogates converge well before)."""

from ftplugins.data.options import selection_options


def _check(values):
    if not 0 <= values.hard_prune < 1:
        raise ValueError(f"--select_influence_hard_prune {values.hard_prune}: expected a fraction in [0, 1)")
    if values.strata < 1:
        raise ValueError(f"--select_influence_strata {values.strata}: expected an integer >= 1")
    if values.depth < 1 or values.hvp_batch_size < 1:
        raise ValueError("--select_influence_depth and --select_influence_hvp_batch_size: expected integers >= 1")
    if values.scale <= 0 or not 0 <= values.damping < 1:
        raise ValueError("--select_influence_scale must be > 0 and --select_influence_damping in [0, 1)")
    if values.effort_weight < 0:
        raise ValueError(f"--select_influence_effort_weight {values.effort_weight}: expected a value >= 0")


SelectInfluenceOptions = selection_options("select_influence", [
    ("surrogate", str, "", "Small causal LM (path or id) whose influence scores stand in for the big model's "
                           "(trained on the pool, as in DEALRec); empty: the model being fine-tuned."),
    ("params", str, "auto", "Parameters the gradients are taken over: auto (a LoRA's when present, else the last "
                            "transformer block's) or a regular expression over parameter names."),
    ("effort_weight", float, 0.5, "lambda: score = minmax(influence) + lambda * minmax(effort)."),
    ("strata", int, 50, "Coverage-enhanced sampling: equal-width score strata."),
    ("hard_prune", float, 0.1, "Fraction of the highest scores dropped before stratifying (DEALRec's hard pruning)."),
    ("depth", int, 100, "LiSSA recursion steps."),
    ("damping", float, 0.01, "LiSSA damping: solves (H + damping * scale * I) h = v."),
    ("scale", float, 25.0, "LiSSA scale; must exceed the Hessian's largest eigenvalue (raise it if LiSSA diverges)."),
    ("hvp_batch_size", int, 8, "Rows per Hessian-vector product (sampled with the seed)."),
], encoder=False, check=_check, doc="Options of select_influence (DEALRec: influence + effort, coverage sampling).")
