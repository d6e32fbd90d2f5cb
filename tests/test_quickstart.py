"""The quick start runs end to end (shortened) and writes its artifacts."""

from __future__ import annotations

import json

from ftplugins.quickstart import quickstart


def test_quickstart_writes_metrics_samples_and_model(tmp_path):
    out = tmp_path / "qs"
    metrics = quickstart(["--output-dir", str(out), "--max-steps", "4", "--eval-prompts", "4",
                          "--option", "masked_thought_ratio=0.2"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["plugins"] == ["masked_thought"] and saved["options"] == {"masked_thought_ratio": 0.2}
    for phase in ("before", "after"):
        assert set(saved[phase]) == {"eval_loss", "answer_accuracy"}
    assert saved["after"]["eval_loss"] < saved["before"]["eval_loss"]
    assert len((out / "samples.txt").read_text().splitlines()) == 4
    assert (out / "model" / "model.safetensors").exists()
    assert json.loads((out / "checkpoints" / "ftplugins_run.json").read_text())["global_step"] == 4
