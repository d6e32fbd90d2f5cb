"""The benchmark harnesses still run end to end (smoke size): what CI checks of benchmarks/.

Benchmarks are not tests: nothing here asserts a speed or an accuracy, only that each harness runs
from its one command, writes its JSON and markdown, and fills the baseline rows (and the rows of
every method whose plugin is installed) with finite numbers, and (with matplotlib) draws its PNGs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped(harness: str) -> list[str]:
    """The harness's method rows (benchmarks/methods.py) whose plugins are installed and accept the row's options:
    each must come back measured, none silently skipped."""
    sys.path.insert(0, ROOT)  # benchmarks/ is a folder of the repository, not an installed package
    from benchmarks.methods import METHODS, unavailable_reason

    rows = [spec.name for spec in METHODS if getattr(spec, harness) and not spec.baseline and not spec.on_request
            and unavailable_reason(spec) is None]
    assert {"ssf", "masked_thought"} <= set(rows)
    return rows


def run_module(module: str, out: str, env_extra: dict[str, str] | None = None,
               extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    done = subprocess.run([sys.executable, "-m", module, "--smoke", "--out", out, *extra_args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{module} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_perf_smoke(tmp_path):
    out = str(tmp_path / "perf")
    run_module("benchmarks.perf", out)
    with open(os.path.join(out, "perf.json")) as handle:
        result = json.load(handle)
    with open(os.path.join(out, "perf.md")) as handle:
        markdown = handle.read()

    assert result["machine"]["device_name"] and result["machine"]["torch_threads"] >= 1
    rows = result["results"]["1x32"]["methods"]
    for name in ("full", "lora-r8", "lora-r16", "trl-plain", "noop-plugin", *shipped("perf")):
        row = rows[name]
        assert row["status"] == "ok", (name, row)
        for key in ("step_s", "compute_s", "setup_s", "peak_train_bytes", "persistent_bytes", "step_vs_full",
                    "step_vs_lora-r16", "memory_vs_lora-r16", "inference_vs_base"):
            assert finite(row[key]), (name, key, row[key])
        assert row["trainable_params"] > 0
        assert f"`{name}`" in markdown
    # LoRA merges; full fine-tuning keeps the base architecture; LoRA trains fewer parameters.
    assert rows["lora-r16"]["merge"] == "merged" and rows["full"]["merge"] == "base architecture"
    assert rows["lora-r8"]["trainable_params"] < rows["lora-r16"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["full"]["step_vs_full"] == pytest.approx(1.0)
    assert finite(result["results"]["1x32"]["overhead"]["noop_plugin_vs_trl_step"])
    # The floor (frozen base, backward to the inputs only) trains nothing and holds no optimizer state; every row
    # is also a multiple of it, in the JSON and in the table.
    floor = rows["floor"]
    assert floor["status"] == "ok" and floor["trainable_params"] == 0 and floor["persistent_bytes"] == 0
    assert finite(floor["step_s"]) and floor["step_vs_floor"] == pytest.approx(1.0)
    for name in ("full", "lora-r16", *shipped("perf")):
        assert rows[name]["step_vs_floor"] == pytest.approx(rows[name]["step_s"] / floor["step_s"]), name
        # On CPU the floor's small peak may fit in memory the process already holds (RSS does not grow): no ratio.
        if floor["peak_train_bytes"]:
            assert rows[name]["memory_vs_floor"] == pytest.approx(
                rows[name]["peak_train_bytes"] / floor["peak_train_bytes"]), name
        else:
            assert math.isnan(rows[name]["memory_vs_floor"]), name
    assert "× floor" in markdown and "`floor`" in markdown
    assert finite(result["cli"]["ftplugins_list_s"])
    # Every row of the table is either measured or skipped with a reason, never silently dropped.
    from benchmarks.methods import METHODS

    for spec in METHODS:
        if spec.perf:
            assert spec.name in rows or spec.name in result["skipped"], spec.name
        # Rows on their own random-text data or with model/shape-sized options run wherever their plugin is installed.
        if spec.perf and (spec.dataset is not None or spec.sized_options is not None) and spec.name in rows:
            assert rows[spec.name]["status"] == "ok", (spec.name, rows[spec.name])
            assert finite(rows[spec.name]["step_s"]) and finite(rows[spec.name]["setup_s"]), spec.name


@pytest.mark.slow
def test_quality_smoke(tmp_path):
    out = str(tmp_path / "quality")
    run_module("benchmarks.quality", out, {"FTPLUGINS_BENCH_CACHE": str(tmp_path / "cache")},
               ("--scenario", "all"))
    with open(os.path.join(out, "quality.json")) as handle:
        result = json.load(handle)
    with open(os.path.join(out, "quality.md")) as handle:
        markdown = handle.read()

    summary = result["summary"]
    for name in ("pretrained", "full", "lora-r8", "lora-r16", *shipped("quality")):
        for key in ("target_mean", "target_std", "retention_mean", "forgetting_mean"):
            assert finite(summary[name][key]), (name, key)
            assert f"`{name}`" in markdown
    assert set(summary["full"]["per_seed"][0]["retention_per_task"]) == set(result["config"]["pretrain"]["tasks"])
    verdicts = {c["claim"]: c["verdict"] for c in result["claims"]}
    assert verdicts["masked_thought>sft"] in ("reproduced", "NOT reproduced")
    # Every scenario ran at smoke size: its rows have numbers, its claims a verdict, its table is in the report.
    sys.path.insert(0, ROOT)
    from benchmarks.quality.claims import CLAIMS
    from benchmarks.quality.scenarios import MODULES

    assert set(result["scenarios"]) == set(MODULES)
    for name, scenario in result["scenarios"].items():
        assert scenario["rows"], name
        for row_name, row in scenario["rows"].items():
            assert any(finite(row.get(f"{key}_mean")) for key, _ in scenario["metrics"]), (name, row_name)
        assert f"## Scenario `{name}`" in markdown
    decided = ("reproduced", "NOT reproduced", "not measured yet")
    for claim in CLAIMS:
        assert verdicts[claim.key] in decided or verdicts[claim.key].startswith("not comparable: "), claim.key
        if claim.scenario in MODULES:
            detail = next(c["detail"] for c in result["claims"] if c["claim"] == claim.key)
            assert "not built" not in detail and "was not run" not in detail, (claim.key, detail)
    # The pre-trained model is cached: a second build of the same configuration is not trained again.
    assert any(name.startswith("pretrained-") for name in os.listdir(tmp_path / "cache"))
    if importlib.util.find_spec("matplotlib"):  # the plots are optional (the bench extra)
        for png in ("quality.png", *(f"scenario-{name}.png" for name in MODULES)):
            assert os.path.getsize(os.path.join(out, png)) > 0, png


def test_build_model_record(tmp_path):
    """``--build-model SIZE --out DIR`` records the build (machine, time, held-out accuracy) as a result whose section
    BENCHMARKS.md generates; a second call finds the cached decoder and says its times are the earlier build's."""
    out, env = str(tmp_path / "build"), {"FTPLUGINS_BENCH_CACHE": str(tmp_path / "cache")}
    run_module("benchmarks.quality", out, env, ("--build-model", "small"))
    with open(os.path.join(out, "build.json")) as handle:
        first = json.load(handle)
    assert first["built_now"] is True and first["size"] == "small" and first["smoke"] is True
    pre = first["pretrained"]
    assert set(pre["accuracy"]) == set(pre["config"]["tasks"]) and finite(pre["build_wall_seconds"])
    assert first["machine"]["device"] in ("cpu", "cuda") and "--build-model" in first["machine"]["command"]
    with open(os.path.join(out, "build.md")) as handle:
        assert "built by this command" in handle.read()

    run_module("benchmarks.quality", out, env, ("--build-model", "small"))
    with open(os.path.join(out, "build.json")) as handle:
        second = json.load(handle)
    assert second["built_now"] is False and second["pretrained"] == pre  # the cached record, not a new build
    sys.path.insert(0, ROOT)
    from benchmarks.report import section

    body = section("build-smoke", os.path.join(out, "build.json"))
    assert "found in the cache" in body and "Recorded by" in body and "# Pre-trained" not in body
    assert "| " + " | ".join(pre["config"]["tasks"]) + " |" in body  # one column per task, in the recipe's order


def test_quality_replot(tmp_path):
    """``--replot`` redraws a scenario-only run's figure from its quality.json, without training."""
    pytest.importorskip("matplotlib")
    row = {"target_mean": 0.5, "target_std": 0.1, "ratio_mean": 0.8, "ratio_std": 0.05, "density_mean": 0.01,
           "density_std": 0.0, "per_seed": [{}, {}], "note": ""}
    result = {"config": {"seeds": [0, 1]}, "scenarios_run": ["grafting"], "scenarios": {"grafting": {
        "title": "Grafting", "rows": {"pretrained": {"target_mean": 0.0, "target_std": 0.0, "per_seed": [{}]},
                                      "graft-1pct": row},
        "metrics": [["target", "target acc."], ["ratio", "grafted / fine-tuned acc."], ["density", "density"]]}}}
    (tmp_path / "quality.json").write_text(json.dumps(result))
    (tmp_path / "quality-scenarios.png").write_bytes(b"old one-figure-for-all file")
    done = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--replot", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scenario-grafting.png" in done.stdout
    assert (tmp_path / "scenario-grafting.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "quality.png").exists()  # no target method table in a scenario-only run
    assert not (tmp_path / "quality-scenarios.png").exists()  # the legacy combined figure is replaced


@pytest.mark.slow
def test_quality_lr_sweep_smoke(tmp_path):
    """``--lr-sweep`` picks each swept row's learning rate on a validation split and records the whole sweep."""
    out = str(tmp_path / "quality")
    run_module("benchmarks.quality", out, {"FTPLUGINS_BENCH_CACHE": str(tmp_path / "cache")},
               ("--methods", "ssf", "--baselines", "full", "--lr-sweep", "full=1e-4,3e-4;ssf=1e-2,3e-2",
                "--epochs", "0.5"))
    with open(os.path.join(out, "quality.json")) as handle:
        result = json.load(handle)
    with open(os.path.join(out, "quality.md")) as handle:
        markdown = handle.read()

    finetune = result["config"]["finetune"]  # --epochs 0.5 over the smoke's 32 examples in batches of 8: 2 steps
    assert (finetune["train_examples"], finetune["batch_size"], finetune["steps"]) == (32, 8, 2)
    sweep = result["lr_sweep"]
    assert sweep["val_examples"] > 0
    for name, candidates in (("full", ["1e-04", "3e-04"]), ("ssf", ["1e-02", "3e-02"])):
        row = sweep["rows"][name]
        assert row["candidates"] == candidates and row["chosen"] in candidates
        for entry in row["per_lr"].values():
            assert finite(entry["val_target_mean"]) and finite(entry["target_mean"]), (name, entry)
            assert len(entry["per_seed"]) == len(result["config"]["seeds"])
        # The table row (and the claims) use the chosen learning rate's runs.
        assert result["summary"][name]["learning_rate"] == row["chosen_lr"]
    assert "## Learning-rate sweep" in markdown
    assert os.path.exists(os.path.join(out, "lr-sweep-runs.jsonl"))


def test_sweep_part_parse():
    sys.path.insert(0, ROOT)
    from benchmarks.quality.lr_sweep import parse_part

    assert parse_part("0/4") == (0, 4) and parse_part("3/4") == (3, 4) and parse_part(None) is None
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(SystemExit, match="K/N"):
            parse_part(bad)


def test_quality_lr_sweep_parts(tmp_path):
    """``--sweep-part K/N``: N processes each train their share of one sweep and write no record; their runs
    concatenated, the same command without the flag writes the record from them, training nothing again."""
    env = {"FTPLUGINS_BENCH_CACHE": str(tmp_path / "cache")}
    args = ("--methods", "ssf", "--baselines", "full", "--lr-sweep", "full=1e-4;ssf=1e-2,3e-2", "--seeds", "1")
    runs = []
    for k in range(2):
        part = str(tmp_path / f"part-{k}")
        run_module("benchmarks.quality", part, env, (*args, "--sweep-part", f"{k}/2"))
        assert not os.path.exists(os.path.join(part, "quality.json"))
        with open(os.path.join(part, "lr-sweep-runs.jsonl")) as handle:
            runs.append([json.loads(line) for line in handle])
    # Three runs (full@1e-4, ssf@1e-2, ssf@3e-2) split 2 + 1, each trained by exactly one part.
    assert [[(r["row"], r["learning_rate"]) for r in part] for part in runs] == [
        [("full", 1e-4), ("ssf", 3e-2)], [("ssf", 1e-2)]]
    out = tmp_path / "merged"
    out.mkdir()
    (out / "lr-sweep-runs.jsonl").write_text("".join(json.dumps(r) + "\n" for part in runs for r in part))
    done = run_module("benchmarks.quality", str(out), env, args)
    assert done.stdout.count("(reused from lr-sweep-runs.jsonl)") == 3
    with open(out / "quality.json") as handle:
        result = json.load(handle)
    ssf = result["lr_sweep"]["rows"]["ssf"]["per_lr"]
    assert ssf["1e-02"]["per_seed"][0]["target"] == runs[1][0]["result"]["target"]


@pytest.mark.slow
def test_selection_perf_smoke(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("ot")
    out = str(tmp_path / "selection")
    run_module("benchmarks.perf.selection", out)
    with open(os.path.join(out, "selection.json")) as handle:
        result = json.load(handle)
    assert finite(result["kmeans"]["ratio"]) and finite(result["embedding"]["ratio"])
    assert finite(result["ot"]["pot"]["ratio"]) and finite(result["ot"]["big"][0]["s_per_iteration"])
    assert result["ot"]["big"][0]["extrapolated"]["pool"] == 5_000_000
    assert [finite(run["s_per_10k_rows"]) for run in result["influence"]["tiny"]] == [True, True]
    assert "| measurement |" in open(os.path.join(out, "selection.md")).read()


@pytest.mark.slow
def test_pairs_perf_smoke(tmp_path):
    """Every pair of ``benchmarks.perf.pairs`` measures both of its sides and their ratio."""
    out = str(tmp_path / "pairs")
    run_module("benchmarks.perf.pairs", out, extra_args=("--threads", "1"))
    with open(os.path.join(out, "pairs.json")) as handle:
        result = json.load(handle)
    sys.path.insert(0, ROOT)
    from benchmarks.perf.pairs import PAIRS

    assert set(result["pairs"]) == set(PAIRS)
    for name, pair in result["pairs"].items():
        assert finite(pair["method"]["step_s"]) and finite(pair["plain"]["step_s"]), name
        assert finite(pair["step_ratio"]) and pair["step_ratio"] > 0, name
    assert "| `list_selftrain` |" in open(os.path.join(out, "pairs.md")).read()


def test_diffusion_perf_smoke(tmp_path):
    pytest.importorskip("diffusers")
    out = str(tmp_path / "diffusion")
    run_module("benchmarks.perf.diffusion", out)
    with open(os.path.join(out, "diffusion.json")) as handle:
        result = json.load(handle)
    adapters = ("full", "ssf", "block_lora", "bottleneck")
    step = {"trainer_vs_hand_loop", "pso_vs_plain", *(f"{a}_vs_lora" for a in adapters),
            *(f"{a}_vs_floor" for a in ("lora r=4", *adapters))}
    memory = {f"memory_{a}_vs_lora" for a in adapters} | {f"memory_{a}_vs_floor" for a in ("lora r=4", *adapters)}
    assert set(result["ratios"]) == step | memory
    assert all(finite(result["ratios"][k]) and result["ratios"][k] > 0 for k in step)
    # the floor (frozen UNet, backward to its input only) trains nothing; each adapter is a multiple of it
    floor = result["rows"]["adapters/floor"]
    assert floor["trainable"] == 0
    assert result["ratios"]["ssf_vs_floor"] == pytest.approx(result["rows"]["adapters/ssf"]["step_s"] / floor["step_s"])
    # PSO does two denoiser passes per target (target + reference pair) and a reference pass: never cheaper
    assert result["ratios"]["pso_vs_plain"] > 1
    rows = result["rows"]
    assert (rows["adapters/ssf"]["trainable"] < rows["adapters/lora r=4"]["trainable"]
            < rows["adapters/full"]["trainable"])
    markdown = open(os.path.join(out, "diffusion.md")).read()
    assert "**Trainer path overhead**" in markdown and "| floor |" in markdown and "vs floor" in markdown
    if importlib.util.find_spec("matplotlib"):
        assert os.path.getsize(os.path.join(out, "diffusion.png")) > 0


def test_soup_perf_smoke(tmp_path):
    """The soup harness without a mergekit environment: the comparison row says so, the scaling rows still run."""
    out = str(tmp_path / "soup")
    run_module("benchmarks.perf.soup", out, extra_args=("--scaling", "2,3", "--threads", "1",
                                                        "--mergekit-python", str(tmp_path / "no-such-python")))
    with open(os.path.join(out, "soup.json")) as handle:
        result = json.load(handle)
    assert result["mergekit"]["error"].startswith("mergekit not installed")
    rows = result["scaling"]["rows"]
    assert set(rows) == {"2", "3"}
    for row in rows.values():
        assert finite(row["seconds"]) and row["peak_rss_bytes"] > 0 and finite(row["above_imports_vs_one_model"])
    markdown = open(os.path.join(out, "soup.md")).read()
    assert "mergekit not installed" in markdown and "| ingredients |" in markdown
    if importlib.util.find_spec("matplotlib"):  # the scaling panel alone, without the mergekit one
        assert os.path.getsize(os.path.join(out, "soup.png")) > 0


@pytest.mark.slow
def test_fsdp_memory_smoke(tmp_path):
    """FSDP2 on 2 CPU processes really shards (tiny model): each rank's counted parameters are a disjoint half of
    the 1-process bytes, LoRA's whole counted state halves, and LIFT's two ranks hold the 1-process trained entries
    between them with neither holding much more than half of its state."""
    out = str(tmp_path / "fsdp")
    run_module("benchmarks.perf.fsdp_memory", out, extra_args=("--rows", "lora", "lift"))
    with open(os.path.join(out, "fsdp.json")) as handle:
        rows = json.load(handle)["rows"]
    for name in ("lora", "lift"):
        one, two = rows[name]["1"], rows[name]["2"]
        assert one["status"] == two["status"] == "ok", (name, two)
        assert two["fsdp"] and all(rank["sharded_parameters"] > 0 for rank in two["ranks"]), name
        assert sum(rank["param_bytes"] for rank in two["ranks"]) == one["param_bytes"] > 0, name
        assert two["param_bytes"] == one["param_bytes"] // 2, name  # the tiny shape's rows split evenly
    lora_one, lora_two = rows["lora"]["1"], rows["lora"]["2"]
    assert lora_one["grad_bytes"] > 0 and lora_one["optimizer_bytes"] > 0
    assert lora_two["persistent_bytes_vs_even_share"] <= 1.01 and lora_two["persistent_bytes_goal_met"]
    lift_one, lift_two = rows["lift"]["1"], rows["lift"]["2"]
    one_entries = lift_one["ranks"][0]["trained_entries"]
    assert sum(rank["trained_entries"] for rank in lift_two["ranks"]) == one_entries > 0
    assert lift_two["optimizer_bytes"] < 0.75 * lift_one["optimizer_bytes"]
    assert "persistent_bytes_vs_lora" in lift_two
    assert "| `lift` | 2 |" in open(os.path.join(out, "fsdp.md")).read()
