"""The data-selection engine shared by ``select_kmeans``, ``select_ot`` and ``select_influence``.

* :mod:`.source`    the pool as Arrow, read in batches; the text field; content fingerprints
* :mod:`.embed`     sentence-encoder / fine-tuned-model embeddings, cached in resumable chunks (:mod:`.cache`)
* :mod:`.kmeans`    faiss k-means, seeded
* :mod:`.sinkhorn`  chunked log-domain entropic OT (memory O((N + M) d + chunk^2)), LAVA's calibrated gradient
* :mod:`.influence` LiSSA inverse-Hessian-vector products, per-row gradient scores
* :mod:`.sampling`  per-cluster quotas, weighted draws, coverage-enhanced strata, most-negative-first
* :mod:`.pipeline`  one selection for every usage form; :mod:`.report` writes rows + report

``select(method, data, budget, ...)`` is the Python form of ``ftplugins select``. Importing this package
imports neither faiss, POT nor torch.
"""

from __future__ import annotations

from typing import Any


def select(method: Any, data: Any, budget: float | None = None, *, output: str | None = None, model: Any = None,
           tokenizer: Any = None, target: Any = None, surrogate: Any = None, show_progress: bool = True,
           **options: Any):
    """Select rows of ``data`` (a Dataset, list of dicts or path) with ``method`` (``"kmeans"``, ``"ot"``,
    ``"influence"`` or the plugin names); options are the plugin's without its prefix (``clusters=64``).

    Returns a :class:`~ftplugins.data.pipeline.Selection` (``.dataset``, ``.indices``, ``.report``); with
    ``output`` the rows are also written there as JSON lines, with the report beside them.
    """
    from ftplugins.errors import OptionError, did_you_mean
    from ftplugins.options import instantiate

    from .methods import resolve
    from .pipeline import Context, run_selection
    from .report import write_selection

    plugin = resolve(method)
    prefix = plugin.name + "_"
    valid = [f.name.removeprefix(prefix) for f in plugin.option_fields()]
    # ``target`` / ``surrogate`` are objects (a Dataset, a model) or, as strings, the plugin's path options.
    for name, value in (("target", target), ("surrogate", surrogate)):
        if isinstance(value, str) and value and name in valid:
            options[name] = value
    target = None if isinstance(target, str) else target
    surrogate = None if isinstance(surrogate, str) else surrogate
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise OptionError(f"{plugin.name}: unknown option(s) {', '.join(unknown)};{did_you_mean(unknown[0], valid)} "
                          f"valid: {', '.join(valid)}.")
    if budget is not None:
        options["budget"] = budget
    opts = instantiate(plugin, {prefix + k: v for k, v in options.items()})
    context = Context(model=model, tokenizer=tokenizer, target=target, surrogate=surrogate,
                      show_progress=show_progress)
    selection = run_selection(plugin, data, opts, context)
    from .shards import process_shard

    if output and process_shard()[0] == 0:  # under a launcher, one process writes
        write_selection(selection, output)
    return selection
