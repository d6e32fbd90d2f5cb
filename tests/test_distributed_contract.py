"""Every installed plugin, in every distributed mode, either trains or says why not (issue #18: "refused (with the
reason)"): the refusal error and `ftplugins info` both carry the reason, one line naming the mechanism."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ftplugins.cli import main
from ftplugins.composition import check_plugins_supported
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import DISTRIBUTED_MODES
from ftplugins.registry import installed_names, load

#: STYLE.md's line limit: a reason fits on one line of `ftplugins info`.
REASON_MAX = 120


def _run_of(plugin):
    """The parts of a Run the mode check reads, with a trainer every plugin applies to."""
    return SimpleNamespace(plugins=[plugin], args=None, trainer_name="SFTTrainer", trainer_cls=None,
                           has_base=lambda name: True)


@pytest.mark.parametrize("name", installed_names())
def test_every_mode_is_supported_or_refused_with_its_reason(name, capsys):
    plugin = load(name)
    refusals = dict(plugin.distributed_refusals or {})
    assert set(plugin.distributed) <= set(DISTRIBUTED_MODES), name
    assert set(refusals) <= set(DISTRIBUTED_MODES) - set(plugin.distributed), (name, "a mode both allowed and refused")
    main(["info", name])
    info = capsys.readouterr().out
    for mode in DISTRIBUTED_MODES:
        if mode in plugin.distributed:
            check_plugins_supported(_run_of(plugin), mode)  # allowed: no error
            assert f"refuses {mode}:" not in info, (name, mode)
            continue
        reason = refusals.get(mode)
        assert isinstance(reason, str) and reason.strip(), f"{name} refuses {mode} without a reason"
        assert "\n" not in reason and len(reason) <= REASON_MAX, (name, mode, len(reason), reason)
        with pytest.raises(FtpluginsError, match=f"plugin {name} does not support {mode} training") as refusal:
            check_plugins_supported(_run_of(plugin), mode)
        assert f": {reason};" in str(refusal.value), (name, mode, str(refusal.value))
        assert f"refuses {mode}: {reason}\n" in info, (name, mode, info)


def _readme_matrix() -> dict[str, dict[str, str]]:
    """README's support matrix: plugin -> column header -> cell."""
    import re
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    top = lines.index("## Support matrix") + 2
    header = [cell.strip() for cell in lines[top].strip("|").split("|")]
    rows = {}
    for line in lines[top + 2:]:
        if not line.startswith("| `"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[re.fullmatch(r"`(\w+)`", cells[0]).group(1)] = dict(zip(header[1:], cells[1:]))
    return rows


def test_the_readme_matrix_refuses_exactly_the_refused_modes_each_with_a_reason():
    """A "refused" cell of the CPU DDP, FSDP2 and DeepSpeed columns names its reason and matches the plugin's
    declaration; a mode the plugin refuses is never shown as tested or declared."""
    columns = {"CPU DDP (gloo, 2 proc.)": "ddp", "FSDP2": "fsdp", "DeepSpeed": "deepspeed"}
    matrix = _readme_matrix()
    assert set(matrix) <= set(installed_names())
    refusing = {n for n in installed_names() if set(DISTRIBUTED_MODES) - set(load(n).distributed)}
    assert refusing <= set(matrix), f"plugins refusing a mode missing from the README matrix: {refusing - set(matrix)}"
    for name, row in matrix.items():
        plugin = load(name)
        for column, mode in columns.items():
            refused = row[column].startswith("refused")
            assert refused is (mode not in plugin.distributed), (name, column, row[column])
            if refused:
                assert row[column].startswith("refused: ") and len(row[column]) > len("refused: "), (name, column)
                assert row["GPU DDP"] == "refused (as CPU DDP)" or mode != "ddp", (name, row["GPU DDP"])
