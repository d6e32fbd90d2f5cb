"""`ftplugins list` / `ftplugins info`: what is installed, cheaply."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from ftplugins.cli import main
from ftplugins.registry import load


def test_list_json_describes_every_builtin(capsys):
    main(["list", "--json"])
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"masked_thought", "ssf"} <= set(rows)
    for name in ("masked_thought", "ssf"):
        row = rows[name]
        assert set(row) >= {"name", "summary", "paper", "contributes", "available", "missing"}
        assert row["available"] is True and row["missing"] == []
        assert row["summary"] and "arXiv" in row["paper"] or "arxiv" in row["paper"].lower()
    assert "data_collator" in rows["masked_thought"]["contributes"]
    assert rows["ssf"]["contributes"] == ["peft_config"]


def test_info_shows_every_option_with_type_default_and_help(capsys):
    for name in ("masked_thought", "ssf"):
        main(["info", name, "--json"])
        info = json.loads(capsys.readouterr().out)
        fields = dataclasses.fields(load(name).options)
        assert [o["name"] for o in info["options"]] == [f.name for f in fields]
        for option, field in zip(info["options"], fields):
            assert option["help"] == field.metadata["help"] and option["help"]
            assert option["type"]
            assert json.dumps(option["default"], default=str)
        main(["info", name])
        text = capsys.readouterr().out
        for field in fields:
            assert f"--{field.name}" in text


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
