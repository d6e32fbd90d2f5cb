"""Model tools that are not training: soups (:mod:`.soup`), intruder dimensions (:mod:`.intruders`), conjugate
prompting (:mod:`.conjugate`), contrastive generative exploration (:mod:`.contrastive`, iterative:
:mod:`.cge_explore`, and inside a run :mod:`.cge_pool_plugin`), probing and pruning (:mod:`.probe_prune`), and
sample-efficiency sweeps over nested data subsets (:mod:`.sweep`).

Each tool is a plain function first, then a command (``ftplugins soup``, ``ftplugins analyze``, ``ftplugins sweep``,
``ftplugins eval conjugate``, ``ftplugins generate --contrastive``), then, where it makes sense inside a run, a plugin.
This package stays light: the tools import torch inside.
"""
