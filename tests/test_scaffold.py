"""`ftplugins new NAME [DIR]` writes a plugin package that pip installs and that passes its own test."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest
from conftest import OFFLINE_PIP, overlay_venv

from ftplugins.cli import main
from ftplugins.errors import FtpluginsError
from ftplugins.registry import check_plugin
from ftplugins.scaffold import scaffold


def import_from(path: str, module: str):
    spec = importlib.util.spec_from_file_location(module, os.path.join(path, module, "__init__.py"))
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_new_writes_a_package_with_entry_point_options_hook_test_and_readme(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["new", "my_method"])
    root = tmp_path / "ftplugins-my-method"
    assert "./ftplugins-my-method" in capsys.readouterr().out
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "ftplugins_my_method/__init__.py", "pyproject.toml", "tests/test_my_method.py"]
    pyproject = (root / "pyproject.toml").read_text()
    assert '[project.entry-points.ftplugins]\nmy_method = "ftplugins_my_method:plugin"' in pyproject
    plugin = import_from(str(root), "ftplugins_my_method").plugin
    check_plugin(plugin)  # the same checks as an installed entry point, paper left empty
    assert plugin.name == "my_method" and plugin.paper == ""
    assert plugin.contributes() == ["prepare_model"]
    assert [f.name for f in plugin.option_fields()] == ["my_method_frozen_layers"]
    assert "ftplugins.testing" in (root / "tests" / "test_my_method.py").read_text()


def test_new_refuses_a_bad_name_and_a_non_empty_folder(tmp_path):
    for bad in ("MyMethod", "my-method", "9lives", "class"):
        with pytest.raises(FtpluginsError, match="lowercase letters"):
            scaffold(bad, str(tmp_path / bad))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FtpluginsError, match="not empty"):
        scaffold("ok", str(tmp_path / "taken"))


@pytest.mark.slow
def test_the_package_pip_installs_and_its_test_passes_and_can_fail(tmp_path):
    """pip install -e into a throwaway venv (offline), then the package's own test: green as written, red
    once the hook is emptied (so the generated test checks the plugin's effect, not only that it runs)."""
    package = scaffold("my_method", str(tmp_path / "pkg"))
    python = overlay_venv(tmp_path / "venv")
    subprocess.run([python, "-m", "pip", "install", *OFFLINE_PIP, "-e", package], check=True, cwd=tmp_path)
    listed = subprocess.run([python, "-m", "ftplugins.cli", "list"], capture_output=True, text=True, check=True)
    assert "my_method" in listed.stdout and "paper: \u2014" in listed.stdout

    def own_test():
        return subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", package],
                              capture_output=True, text=True, cwd=tmp_path)

    done = own_test()
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    module = os.path.join(package, "ftplugins_my_method", "__init__.py")
    source = open(module).read()
    assert "param.requires_grad_(False)" in source
    with open(module, "w") as handle:
        handle.write(source.replace("param.requires_grad_(False)", "pass"))
    done = own_test()
    assert done.returncode == 1 and "1 failed, 2 passed" in done.stdout, done.stdout[-3000:]
