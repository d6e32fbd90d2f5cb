"""A wrong option is one line: what, where (the flag, or the YAML file and key as written there), what was expected.

YAML values go through the command line's own type functions, so a config file accepts exactly what the command
line accepts (``lift_interval: 3.5`` is refused as ``--lift_interval 3.5`` is).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ftplugins import registry
from ftplugins.errors import FtpluginsError, OptionError
from ftplugins.selection import parse, selected_names
from ftplugins.train import train

BASE = dict(model_name_or_path="never-loaded", dataset_name="never-loaded", output_dir="out", use_cpu=True,
            bf16=False, report_to="none")
CLI = ["--model_name_or_path", "never-loaded", "--dataset_name", "x", "--use_cpu", "true", "--bf16", "false"]


def write(tmp_path, name="c.yaml", **keys):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**BASE, **keys}))
    return str(path)


def parse_sft(argv):
    from trl.scripts import sft

    plugins = registry.select(selected_names(argv))
    return parse(list(sft.make_parser().dataclass_types), plugins, argv, command="python -m ftplugins.train sft")


@pytest.mark.parametrize("plugins,flag,value,expected", [
    (["--plugins", "masked_thought"], "--masked_thought_ratio", "abc", "a number"),
    (["--plugins", "lift"], "--lift_rank", "2.5", "an integer"),
    ([], "--max_steps", "five", "an integer"),
])
def test_a_wrong_type_on_the_command_line_is_one_line(plugins, flag, value, expected):
    with pytest.raises(OptionError) as error:
        train(["sft", *CLI, *plugins, flag, value])
    assert str(error.value) == f"{flag} {value!r} (on the command line): expected {expected}."


def test_the_command_prints_no_usage_for_a_wrong_type_and_its_real_name_on_help():
    proc = subprocess.run([sys.executable, "-m", "ftplugins.train", "sft", *CLI, "--plugins", "lift", "--lift_rank",
                           "2.5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage:" not in proc.stderr and "train.py" not in proc.stderr
    assert "ftplugins: error: --lift_rank '2.5' (on the command line): expected an integer." in proc.stderr.splitlines()


def test_help_names_the_program_as_the_user_runs_it(capsys):
    with pytest.raises(SystemExit) as exited:
        train(["sft", "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m ftplugins.train sft ")


def test_a_misspelled_trl_flag_is_suggested_from_trls_options():
    with pytest.raises(OptionError, match=r"unknown option\(s\) --max_stpes; did you mean --max_steps\?"):
        train(["sft", *CLI, "--max_stpes", "5"])


def test_a_misspelled_yaml_key_is_named_as_written_in_the_yaml(tmp_path):
    config = write(tmp_path, max_stpes=5)
    with pytest.raises(OptionError) as error:
        train(["sft", "--config", config])
    message = str(error.value)
    assert message.startswith(f"{config}: unknown key(s) max_stpes; did you mean max_steps?")
    assert "--max_stpes" not in message and "--max_steps" not in message


@pytest.mark.parametrize("keys,message", [
    (dict(plugins=["lift"], lift_interval=3.5), "lift_interval: 3.5 is not an integer."),
    (dict(plugins=["lift"], lift_interval=True), "lift_interval: true is not an integer."),
    (dict(plugins=["lift"], lift_rank=2.9), "lift_rank: 2.9 is not an integer."),
    (dict(plugins=["masked_thought"], masked_thought_ratio=[0.1]), "masked_thought_ratio: [0.1] is a list; expected "
                                                                   "a number."),
    (dict(max_steps="five"), "max_steps: 'five' is not an integer."),
    (dict(save_strategy=False), "save_strategy: false is not one of no, steps, epoch, best. YAML reads an unquoted"),
])
def test_a_wrong_yaml_value_names_the_file_the_key_and_the_type(tmp_path, keys, message):
    config = write(tmp_path, **keys)
    with pytest.raises(OptionError) as error:
        parse_sft(["--config", config])
    assert str(error.value).startswith(f"{config}: {message}")


def test_yaml_and_command_line_read_values_alike(tmp_path):
    config = write(tmp_path, plugins=["ssf", "many_icl"], ssf_target_modules="q_proj", many_icl_shots="3")
    _, options = parse_sft(["--config", config])
    assert options["ssf"].ssf_target_modules == ["q_proj"]  # not ['q', '_', 'p', ...]
    assert options["many_icl"].many_icl_shots == 3
    (_, cli_options) = parse_sft([*CLI, "--plugins", "ssf", "many_icl", "--ssf_target_modules", "q_proj",
                                  "--many_icl_shots", "3"])
    assert cli_options == options


def test_nested_plugin_options_are_refused_not_ignored(tmp_path):
    config = write(tmp_path, plugins={"masked_thought": {"ratio": 0.3}})
    with pytest.raises(OptionError,
                       match=r"plugins is a mapping; .*plugins: \[masked_thought\].*masked_thought_ratio: 0.3"):
        train(["sft", "--config", config])


@pytest.mark.parametrize("content,message", [
    (b"a: [b\n", r"not valid YAML at line 2, column 1"),
    (bytes(range(128, 256)) * 3, r"not a text file"),
    (b"- a\n- b\n", r"the file holds a YAML list, and a config is a mapping"),
])
def test_a_broken_config_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(FtpluginsError, match=f"--config {path}: {message}"):
        train(["sft", "--config", str(path)])
