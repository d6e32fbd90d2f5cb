"""Hub model ids download as they do with ``trl sft``; local paths and offline mode keep their clear errors.

The Hub is served locally (:mod:`ftplugins.testing_hub`) and ``HF_ENDPOINT`` points at it, in child
processes whose environment is online (the test session itself runs with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ftplugins.model_path import check_model_path
from ftplugins.errors import ModelPathError
from ftplugins.testing import save_tiny_llama
from ftplugins.testing_hub import serve_hub

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECKS = """
import json, sys
from ftplugins.model_path import check_model_path
results = {}
for name, path, revision in json.loads(sys.argv[1]):
    try:
        check_model_path(path, revision)
        results[name] = "ok"
    except Exception as exc:
        results[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    folder = save_tiny_llama(str(tmp_path_factory.mktemp("hub-model")))
    repos = {"some-org/tiny": folder, "some-org/private": folder}
    with serve_hub(repos, tokens={"some-org/private": "secret"}) as hub:
        yield hub


def hub_env(hub, hf_home, offline: bool = False, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]), **extra)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_checks(env, cases) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", CHECKS, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hub_ids_are_checked_against_the_hub_then_served_from_the_cache_offline(hub, tmp_path):
    online = run_checks(hub_env(hub, tmp_path / "hf"), [
        ["hub id", "some-org/tiny", None],
        ["commit", "some-org/tiny", hub.commit("some-org/tiny")],
        ["missing repo", "some-org/missing", None],
        ["bad revision", "some-org/tiny", "no-such-branch"],
        ["private without token", "some-org/private", None],
    ])
    assert online["hub id"] == "ok" and online["commit"] == "ok"
    assert "config.json" in hub.downloaded("some-org/tiny")
    assert online["missing repo"].startswith("ModelPathError: model 'some-org/missing' does not exist")
    assert "hf auth login" in online["missing repo"]
    assert "no such revision" in online["bad revision"] and "--model_revision" in online["bad revision"]
    assert "hf auth login" in online["private without token"] and "HF_TOKEN" in online["private without token"]

    with_token = run_checks(hub_env(hub, tmp_path / "hf", HF_TOKEN="secret"),
                            [["private", "some-org/private", None]])
    assert with_token == {"private": "ok"}

    # Offline, what the online run cached is accepted; what it did not cache is refused with the fix.
    offline = run_checks(hub_env(hub, tmp_path / "hf", offline=True), [
        ["cached", "some-org/tiny", None], ["not cached", "some-org/other", None]])
    assert offline["cached"] == "ok"
    assert "HF_HUB_OFFLINE=1" in offline["not cached"] and "hf download some-org/other" in offline["not cached"]


def test_offline_refuses_an_uncached_hub_id():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the test session's setting (conftest)
    with pytest.raises(ModelPathError, match="'no-org/never-cached' does not exist.*HF_HUB_OFFLINE=1 forbids"):
        check_model_path("no-org/never-cached")


@pytest.mark.parametrize("path", ["./not-here", "/no/such/folder", "a/b/c", "~/models/x"])
def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_id(path):
    with pytest.raises(ModelPathError, match="does not exist.*not a Hub model id"):
        check_model_path(path)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelPathError, match="without config.json"):
        check_model_path(str(tmp_path))


@pytest.mark.slow
def test_train_downloads_a_hub_model_like_trl(hub, data_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ftplugins.train", "sft", "--model_name_or_path", "some-org/tiny",
         "--dataset_name", f"{data_dir}/arithmetic", "--output_dir", str(out), "--max_steps", "1",
         "--per_device_train_batch_size", "2", "--save_strategy", "no", "--use_cpu", "true", "--report_to", "none",
         "--disable_tqdm", "true", "--plugins", "masked_thought"],
        env=hub_env(hub, tmp_path / "hf"), capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= hub.downloaded("some-org/tiny")
    assert (tmp_path / "hf" / "hub" / "models--some-org--tiny").is_dir()
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "ftplugins_run.json").read_text())["plugins"] == ["masked_thought"]
