"""BENCHMARKS.md is generated from the committed result files, and results are not recorded from a dirty tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from benchmarks import common, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_committed_document_matches_the_results():
    done = subprocess.run([sys.executable, "-m", "benchmarks.report", "--check"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    # every result folder has its section, and every section its plot where the harness wrote one
    document = open(report.DOCUMENT).read()
    for name in report.result_folders():
        assert f"<!-- generated: {name} (python -m benchmarks.report) -->" in document
        for png in sorted(os.listdir(os.path.join(common.RESULTS_DIR, name))):
            if png.endswith(".png"):
                assert f"(benchmarks/results/{name}/{png})" in document
                assert os.path.getsize(os.path.join(common.RESULTS_DIR, name, png)) < 200_000, (name, png)


def test_check_names_the_section_whose_number_was_altered(tmp_path):
    document = open(report.DOCUMENT).read()
    match = re.search(r"<!-- generated: (perf-85m-cpu-sparse) .*?\n(.*?)<!-- end generated", document, re.S)
    body = match.group(2)
    number = re.search(r"\| `lift-lean` \| (\d+\.\d)", body).group(1)
    altered_body = body.replace(f"| `lift-lean` | {number}", f"| `lift-lean` | {float(number) + 1:.1f}", 1)
    altered = tmp_path / "BENCHMARKS.md"
    altered.write_text(document.replace(body, altered_body, 1))
    done = subprocess.run([sys.executable, "-m", "benchmarks.report", "--check", "--document", str(altered)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 1
    assert "perf-85m-cpu-sparse" in done.stderr
    # regenerating restores the committed text
    assert report.main(["--document", str(altered)]) == 0
    assert altered.read_text() == document


def test_a_result_folder_without_a_section_fails_the_check(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(os.path.join(common.RESULTS_DIR, "kernels-nvidia-h200"), results / "kernels-nvidia-h200")
    shutil.copytree(os.path.join(common.RESULTS_DIR, "kernels-nvidia-h200"), results / "kernels-extra")
    document = tmp_path / "doc.md"
    document.write_text("# x\n\n<!-- generated: kernels-nvidia-h200 (python -m benchmarks.report) -->\n"
                        "<!-- end generated: kernels-nvidia-h200 -->\n\nprose stays\n")
    assert report.main(["--document", str(document), "--results", str(results)]) == 0
    text = document.read_text()
    assert "| 1% | float32 |" in text and text.endswith("\n\nprose stays\n")
    assert report.main(["--check", "--document", str(document), "--results", str(results)]) == 1  # kernels-extra


def test_dirty_label_from_old_commit_suffix_and_new_field():
    assert report.is_dirty({"git_commit": "f8a853b+dirty"})
    assert report.is_dirty({"git_commit": "f8a853b", "dirty": True})
    assert not report.is_dirty({"git_commit": "a9ace26", "dirty": False})
    with open(os.path.join(common.RESULTS_DIR, "perf-85m-cpu-1x32-2threads", "perf.json")) as handle:
        clean = json.load(handle)  # recorded from a clean tree: no marker
    assert "dirty tree" not in report.provenance(clean["machine"])
    assert "dirty tree" in report.provenance({"git_commit": "f8a853b+dirty", "command": "x"})


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_results_are_refused_from_a_dirty_tree_unless_allowed(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("committed\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    assert common.require_clean_tree(False, root=str(repo)) is False
    assert not common.git_commit(str(repo)).endswith("+dirty")

    (repo / "a.txt").write_text("changed\n")
    with pytest.raises(SystemExit, match="--allow-dirty"):
        common.require_clean_tree(False, root=str(repo))
    assert common.require_clean_tree(True, root=str(repo)) is True
    assert common.git_commit(str(repo)).endswith("+dirty")


@pytest.mark.parametrize("module", ["benchmarks.perf.__main__", "benchmarks.quality.__main__",
                                    "benchmarks.perf.selection", "benchmarks.perf.pairs",
                                    "benchmarks.perf.soup"])
def test_each_harness_refuses_a_dirty_tree_before_measuring(module, monkeypatch, tmp_path):
    import importlib

    harness = importlib.import_module(module)
    monkeypatch.setattr(common, "tree_is_dirty", lambda root=common.REPO_ROOT: True)
    with pytest.raises(SystemExit, match="refusing to write benchmark results"):
        harness.main(["--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _perf_row(step_s, peak, floor=None):
    row = {"status": "ok", "step_s": step_s, "step_vs_full": 1.0, "step_vs_lora-r16": 1.0, "setup_s": 0.1,
           "peak_train_bytes": peak, "memory_vs_full": 1.0, "memory_vs_lora-r16": 1.0, "persistent_bytes": 0,
           "trainable_params": 0, "inference_vs_base": 1.0}
    if floor:
        row.update(step_vs_floor=step_s / floor[0], memory_vs_floor=peak / floor[1])
    return row


def test_perf_tables_show_the_floor_ratio_only_when_the_results_have_a_floor_row():
    floor = (0.002, 2 * 2**20)
    with_floor = {"results": {"1x32": {"methods": {"floor": _perf_row(*floor, floor),
                                                   "full": _perf_row(0.007, 5 * 2**20, floor)}}}}
    table = "".join(report.perf_section(with_floor))
    assert "step × floor" in table and "memory × floor" in table
    assert "| `full` | 7.0 | 1.00 | 1.00 | 3.50 | 0.10 | 5 | 1.00 | 1.00 | 2.50 |" in table
    old = {"results": {"1x32": {"methods": {"full": _perf_row(0.007, 5 * 2**20)}}}}
    assert "floor" not in "".join(report.perf_section(old))


def test_a_pairs_result_is_a_section_with_each_pairs_ratio(tmp_path):
    """``pairs.json`` (benchmarks.perf.pairs) renders as a generated section: per pair both sides and the ratio."""
    side = {"label": "x", "step_s_repeats": [0.1, 0.1]}
    result = {"harness": "perf.pairs", "machine": {"git_commit": "abc", "device_name": "cpu"}, "pairs": {
        "pet": {"method": {**side, "step_s": 0.30, "peak_bytes": 300 * 2**20},
                "plain": {**side, "step_s": 0.20, "peak_bytes": 100 * 2**20}, "step_ratio": 1.5, "memory_ratio": 3.0}}}
    folder = tmp_path / "pairs-cpu"
    folder.mkdir()
    (folder / "pairs.json").write_text(json.dumps(result))
    assert report.result_folders(str(tmp_path)) == {"pairs-cpu": str(folder / "pairs.json")}
    body = report.section("pairs-cpu", str(folder / "pairs.json"))
    assert body.startswith('<a id="pairs-cpu"></a>\n')  # what README's claims table links to
    assert "| `pet` | x vs x | 300.0 | 200.0 | 1.50 | 100, 100 vs 100, 100 | 300 | 100 | 3.00 |" in body


def _quality_result(folder, claims, parameters=452448, steps=150, command="python -m benchmarks.quality",
                    train_examples=256):
    folder.mkdir(parents=True)
    (folder / "quality.json").write_text(json.dumps({
        "machine": {"command": command}, "pretrained": {"parameters": parameters},
        "config": {"finetune": {"steps": steps, "train_examples": train_examples}}, "claims": claims}))


def test_the_claims_table_shows_each_claim_at_its_strongest_run(tmp_path):
    """README's claims table: the largest pre-trained model wins, then a learning-rate sweep, then the budget (steps,
    then training examples: a reduced-data diagnosis run does not outrank the standard one, whatever its folder's
    name); the other runs are counted; a claim no run measured is left out; the numbers stop at the verdict's own
    comparison."""
    from benchmarks import claims_table

    claim = {"claim": "x>y", "text": "X beats Y", "paper": "P 2024", "methods": ["x", "y"]}
    _quality_result(tmp_path / "a-small", [{**claim, "verdict": "NOT reproduced", "detail": "acc: x 0.1 vs y 0.2"}])
    _quality_result(tmp_path / "b-small-swept", [{**claim, "verdict": "NOT reproduced", "detail": "acc: x 0.2 vs y 0.3"},
                                                 {**claim, "claim": "z", "verdict": "not measured yet"}],
                    command="python -m benchmarks.quality --lr-sweep x=1e-3,1e-2")
    _quality_result(tmp_path / "c-mid", [{**claim, "verdict": "reproduced",
                                          "detail": "acc: x 0.6 vs y 0.4 (Δ +0.2; within one std); z 0.1"}],
                    parameters=9_000_000, steps=100)
    few = {**claim, "verdict": "NOT reproduced", "detail": "acc: x 0.1 vs y 0.2"}
    _quality_result(tmp_path / "d-mid-few", [few], parameters=9_000_000, steps=100, train_examples=32)
    table = claims_table.markdown(str(tmp_path))
    row = next(line for line in table.splitlines() if line.startswith("| `x>y`"))
    assert "**reproduced**" in row
    assert "[c-mid](BENCHMARKS.md#c-mid) ([record](benchmarks/results/c-mid/quality.md))" in row
    assert "acc: x 0.6 vs y 0.4 (Δ +0.2; within one std) |" in row and "z 0.1" not in row
    assert row.endswith("| 3: 0 reproduced |") and "`z`" not in table
    shutil.rmtree(tmp_path / "d-mid-few")
    # A larger run that could not judge the claim (its premise did not happen) does not hide the one that did.
    _quality_result(tmp_path / "e-big", [{**claim, "verdict": "not comparable: the premise did not happen",
                                          "detail": "acc: x 1.0 vs y 1.0"}], parameters=50_000_000)
    row = next(line for line in claims_table.markdown(str(tmp_path)).splitlines() if line.startswith("| `x>y`"))
    assert "[c-mid]" in row and row.endswith("| 3: 0 reproduced, 1 not comparable |")
    shutil.rmtree(tmp_path / "e-big")
    assert table.startswith("1 paper claims; as stated, at the strongest scale measured: 1 reproduced")
    shutil.rmtree(tmp_path / "c-mid")  # without the larger model, the swept run is the strongest
    row = next(line for line in claims_table.markdown(str(tmp_path)).splitlines() if line.startswith("| `x>y`"))
    assert "[b-small-swept]" in row and "(lr swept)" in row and "**NOT reproduced**" in row



def test_the_claims_table_has_one_line_per_paper_claim_with_its_variants_as_diagnoses(tmp_path):
    """A variant (the claim re-tested under a condition) is shown in its paper claim's line with its own strongest
    run, not on a line of its own; the summary counts paper claims as stated, those a condition rescues, and every
    verdict; a variant whose paper claim no run measured still gets the paper claim's line."""
    from benchmarks import claims_table

    claim = {"claim": "x>y", "text": "X beats Y", "paper": "P", "methods": ["x", "y"]}
    short, long_ = {**claim, "claim": "x>y (long)"}, {**claim, "claim": "x>y (lr 1e-3)"}
    _quality_result(tmp_path / "a", [{**claim, "verdict": "NOT reproduced", "detail": "acc (Δ -0.1)"},
                                     {**short, "verdict": "NOT reproduced", "detail": "acc (Δ -0.2)"}])
    _quality_result(tmp_path / "b", [{**short, "verdict": "reproduced", "detail": "acc (Δ +0.3)"},
                                     {**long_, "verdict": "not comparable: no premise", "detail": "acc (Δ +0.0)"}],
                    steps=400)
    variants = {"x>y (long)": "x>y", "x>y (lr 1e-3)": "x>y"}
    table = claims_table.markdown(str(tmp_path), variant_of=variants)
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(lines) == 1 and lines[0].startswith("| `x>y` | X beats Y (P) | **NOT reproduced** | acc (Δ -0.1) |")
    assert ("| `long` ✓ Δ +0.3 ([b](benchmarks/results/b/quality.md)); `lr 1e-3` ○ "
            "([b](benchmarks/results/b/quality.md)) |") in lines[0]
    assert table.startswith("1 paper claims; as stated, at the strongest scale measured: 0 reproduced in direction, "
                            "1 not reproduced, 0 not comparable")
    assert "1 of the 1 others are reproduced under a condition" in table and "All 3 verdicts" in table
    assert "1 reproduced." in table
    # Without the grouping, every variant is a paper claim of its own.
    assert len([line for line in claims_table.markdown(str(tmp_path), variant_of={}).splitlines()
                if line.startswith("| `")]) == 3
    shutil.rmtree(tmp_path / "a")
    only = claims_table.markdown(str(tmp_path), variant_of=variants)
    assert "**not measured yet**" in only and "1 measured only under a condition" in only
    assert claims_table.condition("pet>head (16 labels, pre-trained MLM head)") == "16 labels, pre-trained MLM head"


def test_every_claim_variant_names_a_paper_claim():
    from benchmarks.quality import claims

    keys = {c.key for c in claims.CLAIMS}
    assert set(claims.VARIANT_OF) <= keys
    assert set(claims.VARIANT_OF.values()) <= keys - set(claims.VARIANT_OF)
    # a paper-protocol variant is a variant, at most one per paper claim, and says why it is the paper's protocol
    assert set(claims.PAPER_PROTOCOL) <= set(claims.VARIANT_OF)
    bases = [claims.VARIANT_OF[v] for v in claims.PAPER_PROTOCOL]
    assert len(bases) == len(set(bases)) and all(len(why) > 40 for why in claims.PAPER_PROTOCOL.values())


def test_a_claim_is_judged_at_the_papers_protocol_whatever_either_verdict(tmp_path):
    """A variant named in ``PAPER_PROTOCOL`` decides its paper claim's line even where the harness's first run is
    stronger or reproduced: the first run moves to the diagnoses, the summary says how many lines are so judged
    and how many of their first runs reproduced. Without the entry the first run decides, as before."""
    from benchmarks import claims_table

    claim = {"claim": "x>y", "text": "X beats Y", "paper": "P", "methods": ["x", "y"]}
    protocol = {**claim, "claim": "x>y (paper's module)"}
    _quality_result(tmp_path / "a-first", [{**claim, "verdict": "reproduced", "detail": "acc (Δ +0.3)"}],
                    parameters=9_000_000)
    _quality_result(tmp_path / "b-protocol", [{**protocol, "verdict": "NOT reproduced", "detail": "acc (Δ -0.1)"}])
    variants, why = {"x>y (paper's module)": "x>y"}, {"x>y (paper's module)": "the paper locates the module"}
    table = claims_table.markdown(str(tmp_path), variant_of=variants, paper_protocol=why)
    row = next(line for line in table.splitlines() if line.startswith("| `x>y`"))
    assert row.startswith("| `x>y` | X beats Y (P) | **NOT reproduced** at the paper's protocol, `paper's module` "
                          "(the paper locates the module) | acc (Δ -0.1) | [b-protocol]")
    assert "| `the harness's first protocol` ✓ Δ +0.3 ([a-first](benchmarks/results/a-first/quality.md)) |" in row
    assert "0 reproduced in direction, 1 not reproduced" in table
    assert "1 are judged by a run at the paper's protocol" in table and "1 of those first runs reproduced" in table
    plain = claims_table.markdown(str(tmp_path), variant_of=variants, paper_protocol={})
    row = next(line for line in plain.splitlines() if line.startswith("| `x>y`"))
    assert "**reproduced** | acc (Δ +0.3)" in row and "`paper's module` ✗ Δ -0.1" in row
    assert "paper's protocol" not in plain

def test_a_claim_of_a_scenario_without_the_decoder_is_ranked_by_its_own_protocol(tmp_path):
    """A MiniLM scenario's claim: the decoder an old run happened to load does not outrank a newer run that chose its
    rows' learning rates on a validation split (its scenario's ``config["lr_sweep"]``), which counts as swept."""
    from benchmarks import claims_table

    claim = {"claim": "ssf~lora (encoder)", "text": "SSF ~ LoRA", "paper": "P", "methods": ["ssf"],
             "scenario": "minilm-classification"}
    _quality_result(tmp_path / "a-small-minilm", [{**claim, "verdict": "NOT reproduced", "detail": "acc (Δ -0.5)"}])
    _quality_result(tmp_path / "b-minilm-lr", [{**claim, "verdict": "reproduced", "detail": "acc (Δ +0.0)"}],
                    parameters=0)
    data = json.loads((tmp_path / "b-minilm-lr" / "quality.json").read_text())
    data["scenarios"] = {"minilm-classification": {"config": {"lr_sweep": {"ssf": [1e-3, 3e-3]}}}}
    (tmp_path / "b-minilm-lr" / "quality.json").write_text(json.dumps(data))
    row = next(line for line in claims_table.markdown(str(tmp_path), variant_of={}).splitlines()
               if line.startswith("| `ssf~lora"))
    assert "[b-minilm-lr]" in row and "(lr swept)" in row and "**reproduced**" in row
    # A decoder scenario's claim still ranks by the decoder's size first.
    assert claims_table.reads_decoder("target") and claims_table.reads_decoder("grafting")
    assert not claims_table.reads_decoder("minilm-classification")


def test_claims_by_scale_puts_each_setting_side_by_side(tmp_path):
    """BENCHMARKS' claims-by-scale section: one column per (decoder size, lr swept) setting, the longest budget of
    each setting in its cell with the verdict's Δ, claims judged in a single setting left out; regenerated and
    checked like the result sections."""
    from benchmarks import claims_table

    claim = {"claim": "x>y", "text": "X beats Y", "paper": "P", "methods": ["x", "y"]}
    once = {**claim, "claim": "once", "verdict": "reproduced", "detail": "a"}
    not_reproduced = {**claim, "verdict": "NOT reproduced"}
    _quality_result(tmp_path / "a-small", [{**not_reproduced, "detail": "acc: x 0.1 vs y 0.2 (Δ -0.100)"}])
    _quality_result(tmp_path / "b-small-long", [{**not_reproduced, "detail": "acc (Δ -0.050); z (Δ +9)"}, once],
                    steps=400)
    _quality_result(tmp_path / "c-mid-swept", [{**claim, "verdict": "reproduced", "detail": "retention only"}],
                    parameters=5_155_584, command="python -m benchmarks.quality --lr-sweep x=1e-3")
    table = claims_table.by_scale_markdown(str(tmp_path))
    header = next(line for line in table.splitlines() if line.startswith("| claim"))
    assert header == "| claim | what the paper says | 0.45M decoder | 5.2M decoder, lr swept |"
    row = next(line for line in table.splitlines() if line.startswith("| `x>y`"))
    assert row == ("| `x>y` | X beats Y | ✗ Δ -0.050 ([b-small-long](benchmarks/results/b-small-long/quality.md)) | "
                   "✓ ([c-mid-swept](benchmarks/results/c-mid-swept/quality.md)) |")
    assert "`once`" not in table and table.startswith("1 claims measured in more than one setting")
    _quality_result(tmp_path / "d-mid", [{**claim, "verdict": "not comparable: the premise did not happen",
                                          "detail": "acc (Δ +0.000)"}], parameters=5_155_584)
    row = next(line for line in claims_table.by_scale_markdown(str(tmp_path)).splitlines()
               if line.startswith("| `x>y`"))
    assert "| ○ ([d-mid](benchmarks/results/d-mid/quality.md)) |" in row and "premise" not in row
    shutil.rmtree(tmp_path / "d-mid")
    stale = ("x\n<!-- generated: claims-by-scale (python -m benchmarks.report) -->\nstale\n"
             "<!-- end generated: claims-by-scale -->\n")
    text, changed = report.regenerate(stale, str(tmp_path))
    assert "claims-by-scale" in changed and "stale" not in text and "✓ ([c-mid-swept]" in text
    assert "claims-by-scale" not in report.regenerate(text, str(tmp_path))[1]  # what --check compares


def test_the_readme_claims_section_is_checked_and_regenerated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated: claims (python -m benchmarks.report) -->\nstale\n"
                      "<!-- end generated: claims -->\nafter\n")
    args = ["--document", report.DOCUMENT, "--readme", str(readme)]
    assert report.main(["--check", *args]) == 1
    assert report.main(args) == 0
    text = readme.read_text()
    assert "stale" not in text and "paper claims" in text and text.startswith("intro\n") and text.endswith("after\n")
    assert report.main(["--check", *args]) == 0
    readme.write_text("no markers\n")
    assert report.main(["--check", *args]) == 1


def test_perf_plot_shows_ratios_to_lora_and_to_the_floor(monkeypatch, tmp_path):
    """With a floor row the figure has a second row of panels: each method as a multiple of the floor."""
    pytest.importorskip("matplotlib")
    from benchmarks import plotting
    from benchmarks.perf import report as perf_report

    figures = []
    monkeypatch.setattr(plotting, "save", lambda fig, path: figures.append(fig) or path)
    floor = (0.002, 2 * 2**20)
    methods = {"floor": _perf_row(*floor, floor), "lora-r16": _perf_row(0.004, 4 * 2**20, floor),
               "full": _perf_row(0.007, 5 * 2**20, floor)}
    result = {"results": {"1x32": {"methods": methods}}, "config": {"model": "tiny"},
              "machine": {"device_name": "cpu"}}
    perf_report.plot(result, str(tmp_path / "perf.png"))
    titles = [ax.get_title() for ax in figures[0].axes]
    assert titles == ["step time / LoRA r=16", "training peak memory / LoRA r=16", "step time / floor",
                      "training peak memory / floor"]
    full_vs_floor = [p for p in figures[0].axes[2].patches]  # bars from 1 to the ratio, one per method
    assert [1 + p.get_height() for p in full_vs_floor] == pytest.approx([1.0, 2.0, 3.5])
    del methods["floor"]
    perf_report.plot(result, str(tmp_path / "perf.png"))
    assert len(figures[1].axes) == 2  # older results: no floor panels


def test_replot_redraws_a_folder_from_its_json_identically(tmp_path):
    """``--replot`` draws the committed PNG again from the JSON alone, byte for byte (no run, no drift)."""
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    names = ("perf-85m-cpu-objectives", "perf-diffusion-cpu", "quality-small-grafting", "pairs-cpu", "perf-fsdp-cpu",
             "soup-85m-cpu")
    for name in names:
        shutil.copytree(os.path.join(common.RESULTS_DIR, name), results / name)
    for png in results.glob("*/*.png"):
        png.unlink()
    document = tmp_path / "doc.md"
    document.write_text("".join(f"{report.BEGIN.format(name=n)}\n{report.END.format(name=n)}\n"
                                for n in names))
    assert report.main(["--replot", "--document", str(document), "--results", str(results)]) == 0
    for name, png in (("perf-85m-cpu-objectives", "perf.png"), ("perf-diffusion-cpu", "diffusion.png"),
                      ("quality-small-grafting", "scenario-grafting.png"), ("pairs-cpu", "pairs.png"),
                      ("perf-fsdp-cpu", "fsdp.png"), ("soup-85m-cpu", "soup.png")):
        drawn = (results / name / png).read_bytes()
        assert drawn == open(os.path.join(common.RESULTS_DIR, name, png), "rb").read(), (name, png)
        assert f"/{name}/{png})" in document.read_text()


def test_diffusion_section_shows_the_floor_only_when_the_results_have_it():
    from benchmarks.perf.diffusion_report import markdown

    def row(ms, peak=None, trainable=10):
        return {"step_s": ms / 1e3, "step_s_per_repeat": [ms / 1e3], "wall_step_s": ms / 1e3, "peak_bytes": peak,
                "trainable": trainable}

    names = ("overhead/DiffusionTrainer", "overhead/hand-written accelerate loop", "pso/plain step (ssf)",
             "pso/PSO step (ssf)", "adapters/lora r=4", "adapters/ssf", "adapters/block_lora", "adapters/bottleneck",
             "adapters/full")
    old = {"config": {"repeats": 1, "steps": 2, "warmup": 1, "batch": 8, "overhead_unet": "tiny",
                      "resolution_overhead_rows": 16},
           "rows": {n: row(10.0) for n in names},
           "ratios": {"trainer_vs_hand_loop": 1.0, "pso_vs_plain": 1.0,
                      **{f"{a}_vs_lora": 1.0 for a in ("full", "ssf", "block_lora", "bottleneck")}}}
    assert "floor" not in markdown(old)
    new = {**old, "rows": {**{n: row(10.0, 4 * 2**20) for n in names}, "adapters/floor": row(4.0, 2 * 2**20, 0)},
           "ratios": {**old["ratios"], **{f"{a}_vs_floor": 2.5 for a in ("lora r=4", "full", "ssf", "block_lora",
                                                                          "bottleneck")},
                      **{f"memory_{a}_vs_floor": 2.0 for a in ("lora r=4", "full", "ssf", "block_lora",
                                                                "bottleneck")}}}
    text = markdown(new)
    assert "| floor | 4 | 4–4 | 4 | – | 1× | 2 | 1× | 0 |" in text
    assert "| ssf | 10 | 10–10 | 10 | 1.00× | 2.50× | 4 | 2.00× | 10 |" in text
