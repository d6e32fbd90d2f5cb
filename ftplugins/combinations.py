"""Which plugins can share a run: each plugin declares the roles it claims, checked before anything loads.

A run has roles that only one plugin can fill: which weights train, who builds the optimizer, what the loss is,
what the training targets are. Two plugins that fill the same role overwrite each other: the later choice silently
wins (``hft`` then ``lift`` trains LIFT's entries only) or the run crashes after the model loaded. So a plugin declares
``claims`` (role -> what it does with it) and ``excludes`` (role -> why it cannot run beside a plugin that claims it),
and :func:`check_combination` refuses a conflicting pair in either order, naming both plugins and the role, when the
trainer class is composed — before any model or dataset is loaded. The core knows roles, never plugin names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import HookConflictError

#: The roles plugins claim, and what filling one means (for the error message). A plugin may claim a new role: the
#: rule is the same (one plugin per role), the message then shows the role's name.
ROLES: dict[str, str] = {
    "adapter": "add a PEFT adapter (one adapter per run)",
    "trainable_set": "decide which weights train",
    "optimizer": "build the optimizer",
    "loss": "define the training loss",
    "targets": "decide the training targets",
    "in_context_examples": "fill the sequences with in-context examples",
    "row_selection": "choose which training rows to keep",
}


def claims(plugin: Any) -> Mapping[str, str]:
    return getattr(plugin, "claims", None) or {}


def excludes(plugin: Any) -> Mapping[str, str]:
    return getattr(plugin, "excludes", None) or {}


def _first(roles: set[str]) -> str:
    known = [r for r in ROLES if r in roles]
    return known[0] if known else sorted(roles)[0]


def conflict(a: Any, b: Any) -> str | None:
    """Why plugins ``a`` and ``b`` cannot share a run, or ``None`` when they compose (symmetric)."""
    shared = set(claims(a)) & set(claims(b))
    if shared:
        role = _first(shared)
        return (f"both {ROLES.get(role, f'claim {role!r}')} ({role}): {a.name} {claims(a)[role]}, "
                f"{b.name} {claims(b)[role]}")
    for x, y in ((a, b), (b, a)):
        hit = set(excludes(x)) & set(claims(y))
        if hit:
            role = _first(hit)
            return f"{x.name} {excludes(x)[role]}, and {y.name} {claims(y)[role]} ({role})"
    return None


def check_combination(plugins: Sequence[Any]) -> None:
    """Refuse the first conflicting pair among ``plugins`` with a :class:`HookConflictError` naming both."""
    for i, a in enumerate(plugins):
        for b in plugins[i + 1 :]:
            reason = conflict(a, b)
            if reason:
                raise HookConflictError(
                    f"plugins {a.name} and {b.name} cannot be combined: {reason}. Select one of them "
                    f"(`ftplugins info NAME` lists what each plugin claims)."
                )
