"""Model tools that are not training: soups (:mod:`.soup`), intruder dimensions (:mod:`.intruders`).

Each tool is a plain function first, then a command (``ftplugins soup``, ``ftplugins analyze``), then, where
it makes sense inside a run, a plugin. This package stays light: the tools import torch inside.
"""
