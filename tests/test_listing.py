"""`ftplugins list` / `ftplugins info`: what is installed, cheaply."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ftplugins.cli import main
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import NO_PAPER, Plugin
from ftplugins.registry import available_entry_points, installed_names, load


def test_list_describes_every_installed_plugin(capsys):
    main(["list", "--json"])
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == installed_names() and {"masked_thought", "ssf"} <= set(rows)
    main(["list"])
    text = capsys.readouterr().out
    for name, row in rows.items():
        plugin = load(name)
        assert set(row) >= {"name", "summary", "paper", "contributes", "available", "missing"}, name
        assert row["summary"] == plugin.summary and row["summary"], name
        assert row["paper"] == (plugin.paper or NO_PAPER), name
        assert row["missing"] == plugin.missing() and row["available"] is (not plugin.missing()), name
        assert row["contributes"] == plugin.contributes() and row["contributes"], name
        if available_entry_points()[name].value.startswith("ftplugins.methods."):
            assert plugin.paper, f"built-in method {name} cites no paper"
        for shown in (name, row["summary"], row["paper"], *row["contributes"]):
            assert shown in text, (name, shown)
    assert "data_collator" in rows["masked_thought"]["contributes"]
    assert rows["ssf"]["contributes"] == ["peft_config"]


@pytest.mark.parametrize("name", installed_names())
def test_info_shows_every_option_with_type_default_and_help(name, capsys):
    plugin = load(name)
    main(["info", name, "--json"])
    info = json.loads(capsys.readouterr().out)
    assert (info["name"], info["summary"], info["paper"]) == (name, plugin.summary, plugin.paper or NO_PAPER)
    assert info["contributes"] == plugin.contributes() and info["distributed"] == list(plugin.distributed)
    fields = plugin.option_fields()
    assert [o["name"] for o in info["options"]] == [f.name for f in fields]
    for option, field in zip(info["options"], fields):
        assert option["help"] == field.metadata["help"] and option["help"], option
        assert option["type"]
        assert json.dumps(option["default"], default=str)
    main(["info", name])
    text = capsys.readouterr().out
    assert plugin.summary in text and (plugin.paper or NO_PAPER) in text
    for field in fields:
        assert f"--{field.name}" in text


def test_a_plugin_without_a_paper_is_listed_with_a_dash(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    from ftplugins import registry

    class Utility(Plugin):
        name = "utility"
        summary = "a utility plugin, no paper"

    eps = {**registry.available_entry_points(),
           "utility": EntryPoint(name="utility", value="test_listing:Utility", group="ftplugins")}
    monkeypatch.setattr(registry, "available_entry_points", lambda: eps)
    monkeypatch.setitem(registry._loaded, "utility", Utility())
    main(["list"])
    assert re.search(rf"^utility\s.*\n\s+paper: {NO_PAPER}$", capsys.readouterr().out, re.M)
    main(["info", "utility"])
    assert re.search(rf"^paper:\s+{NO_PAPER}$", capsys.readouterr().out, re.M)
    Utility.paper = None
    with pytest.raises(FtpluginsError, match="`paper` must be a string"):
        registry.check_plugin(Utility())


def test_info_of_masked_thought_lists_what_the_wrapper_patches(capsys):
    main(["info", "masked_thought", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["patches"] == ["trl.SFTTrainer"]
    main(["info", "ssf", "--json"])
    assert "transformers.Trainer" in json.loads(capsys.readouterr().out)["patches"]


def test_listing_does_not_import_torch():
    code = "import sys; from ftplugins.cli import main; main(['list']); assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "masked_thought" in proc.stdout and "ssf" in proc.stdout


def test_info_of_a_misspelled_plugin_names_what_was_typed(capsys):
    import pytest

    from ftplugins.errors import UnknownPluginError

    with pytest.raises(UnknownPluginError) as error:
        main.__wrapped__(["info", "masked_thougth"])
    message = str(error.value)
    assert message.startswith("ftplugins info masked_thougth: no such plugin; did you mean masked_thought?")
    assert "--plugins" not in message


def test_list_marks_third_party_plugins(capsys, recorder_entry_point):
    main(["list"])
    lines = capsys.readouterr().out.splitlines()
    recorder = next(line for line in lines if line.startswith("recorder "))
    assert "[third-party: conftest]" in recorder
    assert not any("third-party" in line for line in lines if line.startswith(("masked_thought ", "ssf ")))
    main(["list", "--json"])
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["recorder"]["builtin"] is False and rows["ssf"]["builtin"] is True


def test_info_shows_the_roles_a_plugin_claims(capsys):
    main(["info", "lift", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert set(info["claims"]) >= {"trainable_set", "optimizer"}
    main(["info", "lift"])
    assert "claims:       trainable_set (" in capsys.readouterr().out


def test_run_help_documents_its_arguments(capsys):
    from ftplugins.run import main as run_main

    run_main(["--help"])
    text = capsys.readouterr().out
    for argument in ("--plugins a,b", "--config FILE", "--<plugin>_<option> VALUE", "script.py [args]", "example:"):
        assert argument in text
