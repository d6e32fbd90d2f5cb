"""README's "Seed papers and what became of them" table accounts for every seed paper, and names only what ships."""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Seed papers and what became of them"
#: The seed abstracts (outside the repository; the project's shared folder beside the checkout by default).
SEEDS_DIR = os.environ.get("FTPLUGINS_SEEDS_DIR", os.path.join(REPO, "..", "shared", "seeds"))


def listed_seeds() -> list[str]:
    """The committed seed titles (tests/seed_papers.txt)."""
    with open(os.path.join(REPO, "tests", "seed_papers.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def titles_in(text: str) -> list[str]:
    """Titles in a seed file (a daily-papers page): a short line, a blank line, then its abstract."""
    lines = text.split("\n")
    return [lines[i].strip() for i in range(len(lines) - 2)
            if lines[i + 1] == "" and len(lines[i + 2]) > 300 and 0 < len(lines[i].strip()) < 250]


def table() -> dict[str, str]:
    """seed paper -> what carries it, from README's seed table."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] != "seed paper":
            assert cells[0] not in rows, f"two rows for {cells[0]!r}"
            rows[cells[0]] = cells[1]
    return rows


def test_every_seed_paper_has_a_row_and_every_row_is_a_seed_paper():
    rows, seeds = table(), listed_seeds()
    assert len(seeds) == len(set(seeds)) >= 40
    assert not [s for s in seeds if s not in rows], "seed papers without a row in README's seed table"
    assert not [r for r in rows if r not in seeds], "rows of README's seed table that are not seed papers"
    assert all(rows[s] for s in seeds)


def test_the_committed_list_is_the_seed_folder():
    if not os.path.isdir(SEEDS_DIR):
        pytest.skip(f"no seed folder at {SEEDS_DIR} (set FTPLUGINS_SEEDS_DIR); the committed list is checked above")
    found = []
    for name in sorted(os.listdir(SEEDS_DIR)):
        with open(os.path.join(SEEDS_DIR, name), encoding="utf-8") as f:
            found += titles_in(f.read())
    assert sorted(found) == sorted(listed_seeds())


def test_every_plugin_and_tool_the_table_names_ships():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        shipped = set(tomllib.load(f)["project"]["entry-points"]["ftplugins"])
    named_plugins, named_tools = set(), set()
    for carrier in table().values():
        named_plugins |= set(re.findall(r"\bplugins? `(\w+)`", carrier))
        named_tools |= set(re.findall(r"\btool `([\w.]+)`", carrier))
        assert re.search(r"\bplugin `|\btool `|planned: issue \d+|not a fine-tuning plugin: \S", carrier), carrier
    assert named_plugins and not named_plugins - shipped, sorted(named_plugins - shipped)
    assert named_tools and all(importlib.util.find_spec(t) for t in named_tools), named_tools
