"""``python -m ftplugins.eval HARNESS ...`` (the same as ``ftplugins eval HARNESS ...``)."""

from ftplugins.eval.cli import main

main()
