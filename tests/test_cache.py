"""``ftplugins.cache.cached_build``: built once per recipe, never half-built (used by the tiny base, benchmarks)."""

from __future__ import annotations

import os

import pytest

from ftplugins.cache import cached_build, is_cached, recipe_key


def test_a_recipe_is_built_once_and_a_changed_recipe_builds_anew(tmp_path):
    builds = []

    def build(folder):
        builds.append(folder)
        (open(os.path.join(folder, "weights.txt"), "w")).write("w")
        return {"loss": 0.5}

    folder, record = cached_build(str(tmp_path), "base", {"steps": 10, "tasks": ("a", "b")}, build)
    again, record_again = cached_build(str(tmp_path), "base", {"steps": 10, "tasks": ("a", "b")}, build)
    assert (folder, record) == (again, record_again) and len(builds) == 1
    key = recipe_key({"steps": 10, "tasks": ["a", "b"]})
    assert os.path.basename(folder) == f"base-{key}"
    assert record == {"recipe": {"steps": 10, "tasks": ["a", "b"]}, "key": key, "loss": 0.5}
    other, _ = cached_build(str(tmp_path), "base", {"steps": 11}, build)
    assert other != folder and len(builds) == 2


def test_is_cached_says_whether_cached_build_would_build(tmp_path):
    recipe = {"steps": 10}
    assert not is_cached(str(tmp_path), "base", recipe)
    # A folder without its record (what a crash mid-rename or a hand-made folder leaves) is not a cached build.
    os.makedirs(tmp_path / f"base-{recipe_key(recipe)}")
    assert not is_cached(str(tmp_path), "base", recipe)
    os.rmdir(tmp_path / f"base-{recipe_key(recipe)}")
    cached_build(str(tmp_path), "base", recipe, lambda folder: {})
    assert is_cached(str(tmp_path), "base", recipe)
    assert not is_cached(str(tmp_path), "base", {"steps": 11}) and not is_cached(str(tmp_path), "other", recipe)


def test_an_interrupted_build_leaves_nothing_that_looks_cached(tmp_path):
    def build(folder):
        open(os.path.join(folder, "half.txt"), "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(str(tmp_path), "base", {"steps": 10}, build)
    assert os.listdir(tmp_path) == []
