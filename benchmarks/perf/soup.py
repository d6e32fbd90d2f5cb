"""``python -m benchmarks.perf.soup``: our uniform model soup against mergekit's ``linear`` merge.

Both merge the same N ingredients (default 4) of the 85M Llama shape (``benchmarks.perf.harness.MODELS``; fp32
safetensors, the base model plus seeded noise: fine-tunes of one initialisation as far as the merge can tell), each
in a fresh subprocess through the command a user types: ``ftplugins soup A B C D -o OUT`` and ``mergekit-yaml
linear.yml OUT`` (weight 1 each, ``normalize: true``, ``dtype: float32``; mergekit in its own virtual environment,
see below). Measured per process, interleaved over ``--repeats`` (medians): wall time from start to exit
(interpreter start-up and imports included, as the user waits for them) and the peak resident set size
(``ru_maxrss`` of that child from ``os.wait4``), as ratios ours / mergekit. The outputs must be equal to fp32
rounding: per tensor, ``|ours - mergekit| <= N * eps32 * max_i |ingredient_i|`` (mergekit sums in fp32, we in fp64
and round once).

Then our streaming peak against the number of ingredients (``--scaling``, default 2, 4, 8): the peak RSS of the
soup process minus that of a process that only imports what the command imports, as a multiple of one model's
bytes. Streaming (one tensor of every ingredient at a time) keeps it about one model whatever N is.

mergekit pins its own torch/transformers, so it lives in its own environment: ``--mergekit-python`` (or
``$FTPLUGINS_MERGEKIT_PYTHON``; default ``benchmarks/.mergekit-venv/bin/python`` when it exists) is that
environment's interpreter, whose ``mergekit-yaml`` sits beside it. Make one with::

    python -m venv benchmarks/.mergekit-venv
    benchmarks/.mergekit-venv/bin/pip install torch==2.13.0 mergekit

Without it the comparison says "mergekit not installed" and the scaling rows still run. Writes ``soup.json`` and
``soup.md`` to ``--out`` (default ``benchmarks/results/soup-<model>-cpu``); ``--smoke``: the tiny shape, one
repetition (what CI can afford).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import common

DEFAULT_VENV = os.path.join(common.REPO_ROOT, "benchmarks", ".mergekit-venv")
MB = 2**20
#: What the ``ftplugins soup`` process imports before it reads a tensor (its baseline RSS).
OUR_IMPORTS = ("import torch, safetensors, ftplugins.cli, ftplugins.tools.soup, ftplugins.safetensors_stream, "
               "ftplugins.atomic, ftplugins.output_lock")


# --- the ingredients ---------------------------------------------------------------------------


def build_ingredients(model: str, count: int, folder: str, seed: int = 0, noise: float = 0.01) -> list[str]:
    """``count`` model folders: the ``model``-shaped base plus ``noise`` × N(0, 1) (its own seed each), fp32,
    ``save_pretrained`` safetensors with the tokenizer (as fine-tunes are saved)."""
    import torch

    from benchmarks.perf.harness import build_model
    from ftplugins.testing import tiny_tokenizer

    base = build_model(model, seed=seed)
    original = {name: p.detach().clone() for name, p in base.named_parameters()}
    tokenizer = tiny_tokenizer()
    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(1_000 + i)
        with torch.no_grad():
            for name, param in base.named_parameters():
                param.copy_(original[name] + noise * torch.randn(param.shape, generator=generator))
        path = os.path.join(folder, f"ingredient-{i}")
        base.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths


def model_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))


# --- one measured process ----------------------------------------------------------------------


#: Runs the measured command as its own child and prints that child's wall seconds, exit code and ``ru_maxrss``.
#: A separate small interpreter (stdlib only), because Linux's ``ru_maxrss`` of an exec'd child starts from the
#: RSS of the process it was forked from: forked from this harness (torch and models loaded), every child would
#: report at least the harness's own size.
_LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(json.loads(sys.argv[1]), stdout=sys.stderr, stderr=sys.stderr)
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"seconds": time.perf_counter() - started, "maxrss_kb": usage.ru_maxrss,
                  "returncode": child.returncode}))
"""


def run_measured(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` to its end; its wall seconds, its own peak RSS (``os.wait4``'s rusage of that child) and exit
    code. The command's output goes to ``log_path``."""
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(argv)], stdout=subprocess.PIPE,
                              stderr=log, env=env, cwd=common.REPO_ROOT, check=False)
    if done.returncode != 0 and not done.stdout.strip():
        return {"seconds": None, "peak_rss_bytes": None, "returncode": done.returncode}
    measured = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {"seconds": measured["seconds"], "peak_rss_bytes": measured["maxrss_kb"] * 1024,
            "returncode": measured["returncode"]}


def our_env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": common.REPO_ROOT}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def our_soup(paths: list[str], output: str) -> list[str]:
    return [sys.executable, "-m", "ftplugins.cli", "soup", *paths, "-o", output]


def mergekit_config(paths: list[str], folder: str) -> str:
    """mergekit's ``linear`` merge of ``paths``, equal weights, normalised, in fp32 (written as YAML-compatible
    JSON, which mergekit's YAML reader takes)."""
    config = {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": True},
              "models": [{"model": p, "parameters": {"weight": 1.0}} for p in paths]}
    path = os.path.join(folder, "linear.yml")
    with open(path, "w") as handle:
        json.dump(config, handle, indent=2)
    return path


def mergekit_soup(python: str, config: str, output: str, threads: int | None) -> list[str]:
    argv = [os.path.join(os.path.dirname(python), "mergekit-yaml"), config, output, "--quiet"]
    return argv + (["--num-threads", str(threads)] if threads else [])


def find_mergekit(requested: str | None) -> tuple[str | None, str | None]:
    """(the mergekit environment's python, None) or (None, why it cannot run)."""
    python = requested or os.environ.get("FTPLUGINS_MERGEKIT_PYTHON") or os.path.join(DEFAULT_VENV, "bin", "python")
    if not os.path.exists(python):
        return None, (f"mergekit not installed (no interpreter at {python}; make one: python -m venv "
                      f"benchmarks/.mergekit-venv && benchmarks/.mergekit-venv/bin/pip install torch==2.13.0 "
                      "mergekit, or pass --mergekit-python)")
    if not os.path.exists(os.path.join(os.path.dirname(python), "mergekit-yaml")):
        return None, f"mergekit not installed in the environment of {python} (no mergekit-yaml beside it)"
    return python, None


def mergekit_version(python: str) -> str | None:
    done = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


# --- comparing the outputs ---------------------------------------------------------------------


def tensors_of(folder: str) -> dict[str, tuple[str, str]]:
    """Tensor name -> (file, name) over every safetensors file of a model folder."""
    from safetensors import safe_open

    found = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="pt") as handle:
                for key in handle.keys():
                    found[key] = (os.path.join(folder, name), key)
    return found


def compare(ours: str, theirs: str, ingredients: list[str]) -> dict[str, Any]:
    """Whether two soups of ``ingredients`` agree to fp32 rounding, tensor by tensor (streamed)."""
    import torch
    from safetensors import safe_open

    mine, other = tensors_of(ours), tensors_of(theirs)
    sources = [tensors_of(p) for p in ingredients]
    if set(mine) != set(other):
        return {"equal": False, "reason": f"different tensors: {sorted(set(mine) ^ set(other))[:3]}"}
    worst_abs, worst_ratio, worst_name, equal = 0.0, 0.0, None, True
    eps = torch.finfo(torch.float32).eps

    def load(where):
        with safe_open(where[0], framework="pt") as handle:
            return handle.get_tensor(where[1])

    for name in sorted(mine):
        a, b = load(mine[name]), load(other[name])
        if a.dtype != b.dtype or a.shape != b.shape:
            return {"equal": False, "reason": f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"}
        scale = max(float(load(s[name]).abs().max()) for s in sources)
        bound = len(ingredients) * eps * max(scale, torch.finfo(torch.float32).tiny)
        diff = float((a.double() - b.double()).abs().max())
        if diff / bound > worst_ratio:
            worst_ratio, worst_name = diff / bound, name
        worst_abs = max(worst_abs, diff)
        equal &= diff <= bound
    return {"equal": equal, "tensors": len(mine), "max_abs_diff": worst_abs,
            "max_diff_over_bound": worst_ratio, "worst_tensor": worst_name,
            "bound": "per tensor: N * eps32 * max_i |ingredient_i| (fp32 summation error)"}


# --- the runs ----------------------------------------------------------------------------------


def compare_with_mergekit(paths: list[str], python: str, work: str, repeats: int, threads: int | None,
                          log) -> dict[str, Any]:
    config = mergekit_config(paths, work)
    log_path = os.path.join(work, "merges.log")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "mergekit": []}
    for rep in range(repeats):
        for side in ("ours", "mergekit") if rep % 2 == 0 else ("mergekit", "ours"):
            output = os.path.join(work, f"{side}-out")
            shutil.rmtree(output, ignore_errors=True)
            argv = our_soup(paths, output) if side == "ours" else mergekit_soup(python, config, output, threads)
            run = run_measured(argv, log_path, our_env(threads) if side == "ours" else _mergekit_env(threads))
            if run["returncode"] != 0:
                with open(log_path) as handle:
                    tail = handle.read()[-2000:]
                raise SystemExit(f"{side} merge failed (exit {run['returncode']}); its output ends:\n{tail}")
            runs[side].append(run)
            log(f"  rep {rep + 1}/{repeats} {side:<8} {run['seconds']:7.2f} s  peak RSS "
                f"{run['peak_rss_bytes'] / MB:8.0f} MiB")
    check = compare(os.path.join(work, "ours-out"), os.path.join(work, "mergekit-out"), paths)
    log(f"  outputs equal to fp32 rounding: {check['equal']} (max |diff| {check.get('max_abs_diff', 0):.3g}, "
        f"worst diff / bound {check.get('max_diff_over_bound', 0):.3g})")
    summary = {side: {"seconds": common.median(r["seconds"] for r in rs),
                      "peak_rss_bytes": common.median(r["peak_rss_bytes"] for r in rs), "runs": rs}
               for side, rs in runs.items()}
    return {**summary, "equality": check,
            "time_ratio": common.ratio(summary["ours"]["seconds"], summary["mergekit"]["seconds"]),
            "memory_ratio": common.ratio(summary["ours"]["peak_rss_bytes"], summary["mergekit"]["peak_rss_bytes"]),
            "mergekit_argv": mergekit_soup(python, "linear.yml", "OUT", threads)[1:]}


def _mergekit_env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours on its path
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def scaling(paths: list[str], counts: list[int], work: str, repeats: int, threads: int | None, one_model: int,
            log) -> dict[str, Any]:
    """Our soup of the first n ingredients for each n of ``counts``: peak RSS above the import baseline."""
    log_path = os.path.join(work, "scaling.log")
    imports = [run_measured([sys.executable, "-c", OUR_IMPORTS], log_path, our_env(threads))
               for _ in range(repeats)]
    baseline = common.median(r["peak_rss_bytes"] for r in imports)
    rows = {}
    for n in counts:
        runs = []
        for _ in range(repeats):
            output = os.path.join(work, f"scaling-{n}")
            shutil.rmtree(output, ignore_errors=True)
            run = run_measured(our_soup(paths[:n], output), log_path, our_env(threads))
            if run["returncode"] != 0:
                raise SystemExit(f"our soup of {n} ingredients failed (exit {run['returncode']}); see {log_path}")
            runs.append(run)
        peak = common.median(r["peak_rss_bytes"] for r in runs)
        rows[str(n)] = {"seconds": common.median(r["seconds"] for r in runs), "peak_rss_bytes": peak,
                        "above_imports_bytes": peak - baseline,
                        "above_imports_vs_one_model": (peak - baseline) / one_model, "runs": runs}
        log(f"  our soup of {n}: {rows[str(n)]['seconds']:6.2f} s, peak RSS {peak / MB:7.0f} MiB, above imports "
            f"{(peak - baseline) / MB:7.0f} MiB = {(peak - baseline) / one_model:.2f} x one model")
    return {"import_baseline_rss_bytes": baseline, "imports": OUR_IMPORTS, "rows": rows}


# --- the report --------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    out = []
    mk = result["mergekit"]
    if "error" in mk:
        out.append(f"mergekit comparison: {mk['error']}.\n")
    else:
        eq = mk["equality"]
        rows = [[f"`{side}`", common.fmt(mk[side]["seconds"], ".2f"),
                 common.fmt(mk[side]["peak_rss_bytes"] / MB, ".0f")] for side in ("ours", "mergekit")]
        rows.append(["ours / mergekit", common.fmt(mk["time_ratio"], ".2f") + "×",
                     common.fmt(mk["memory_ratio"], ".2f") + "×"])
        out.append(f"**Uniform soup of {cfg['ingredients']} ingredients ({cfg['model']}, "
                   f"{cfg['model_bytes'] / MB:.0f} MiB each) vs mergekit {mk.get('version')} `linear`**, medians of "
                   f"{cfg['repeats']} interleaved runs, each a fresh process (start-up included)\n\n")
        out.append(common.markdown_table(["merge", "wall s", "peak RSS MiB"], rows))
        out.append(f"\nOutputs equal to fp32 rounding: **{'yes' if eq['equal'] else 'NO'}** "
                   f"({eq.get('tensors', 0)} tensors; max |ours − mergekit| "
                   f"{common.fmt(eq.get('max_abs_diff'), '.3g')}, worst tensor at "
                   f"{common.fmt(eq.get('max_diff_over_bound'), '.2f')} of the bound N·eps32·max|ingredient|).\n")
    sc = result["scaling"]
    rows = [[n, common.fmt(r["seconds"], ".2f"), common.fmt(r["peak_rss_bytes"] / MB, ".0f"),
             common.fmt(r["above_imports_bytes"] / MB, ".0f"), common.fmt(r["above_imports_vs_one_model"], ".2f")]
            for n, r in sc["rows"].items()]
    out.append(f"\n**Our streaming peak vs the number of ingredients** (import-only process: "
               f"{sc['import_baseline_rss_bytes'] / MB:.0f} MiB; one model: {cfg['model_bytes'] / MB:.0f} MiB)\n\n")
    out.append(common.markdown_table(["ingredients", "wall s", "peak RSS MiB", "above imports MiB",
                                      "above imports × one model"], rows))
    return "".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape, one repetition (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/soup-<model>-cpu)")
    parser.add_argument("--model", help="model shape of benchmarks/perf/harness.py (default 85m; smoke: tiny)")
    parser.add_argument("--ingredients", type=int, default=4, help="ingredients of the mergekit comparison (4)")
    parser.add_argument("--scaling", default="2,4,8", help="ingredient counts of our streaming-peak rows (2,4,8)")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions (default 3; smoke 1)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS / mergekit --num-threads of the merges")
    parser.add_argument("--mergekit-python", help="python of mergekit's environment (default "
                                                  "$FTPLUGINS_MERGEKIT_PYTHON, else benchmarks/.mergekit-venv)")
    parser.add_argument("--workdir", help="where the ingredients and merges are written (default a temporary "
                                          "folder, removed at the end)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise; --smoke runs are never committed and need no flag)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    sys.stdout.reconfigure(line_buffering=True)
    common.offline_environment()
    common.quiet_warnings()
    model = args.model or ("tiny" if args.smoke else "85m")
    repeats = args.repeats or (1 if args.smoke else 3)
    counts = sorted({int(c) for c in args.scaling.split(",") if c.strip()})
    out = args.out or os.path.join(common.RESULTS_DIR, f"soup-{model}-cpu")
    python, missing = find_mergekit(args.mergekit_python)
    started = time.perf_counter()
    work = args.workdir or tempfile.mkdtemp(prefix="ftplugins-soupbench-")
    try:
        needed = max([args.ingredients, *counts])
        print(f"soup perf: building {needed} ingredients of the {model} shape in {work} ...")
        paths = build_ingredients(model, needed, os.path.join(work, "ingredients"))
        one_model = model_bytes(paths[0])
        if python is None:
            print(f"skip the comparison: {missing}")
            comparison: dict[str, Any] = {"error": missing}
        else:
            print(f"ours vs mergekit linear, {args.ingredients} ingredients, {repeats} repetitions:")
            comparison = compare_with_mergekit(paths[:args.ingredients], python, work, repeats, args.threads, print)
            comparison["version"] = mergekit_version(python)
        print("our streaming peak vs ingredients:")
        scaled = scaling(paths, counts, work, repeats, args.threads, one_model, print)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    import torch

    from benchmarks.perf.harness import MODELS

    result = {
        "harness": "perf.soup",
        "config": {"model": model, "model_shape": MODELS[model], "model_bytes": one_model,
                   "ingredients": args.ingredients, "scaling": counts, "repeats": repeats, "threads": args.threads,
                   "dtype": "float32", "ours": "ftplugins soup A B ... -o OUT (ftplugins.tools.soup.uniform)",
                   "mergekit": "mergekit-yaml linear.yml OUT --quiet (merge_method linear, weight 1 each, "
                               "normalize true, dtype float32)"},
        "machine": common.machine_info("cpu", dirty=dirty),
        "mergekit": comparison,
        "scaling": scaled,
        "elapsed_s": time.perf_counter() - started,
    }
    result["machine"]["torch_threads"] = args.threads or torch.get_num_threads()
    published = common.publish(out, "soup", result, markdown(result))
    plot(result, os.path.join(out, "soup.png"))
    return published


def plot(result: dict[str, Any], path: str) -> str | None:
    """Ours as a multiple of mergekit (wall time, peak RSS; when mergekit ran), and our peak above the imports as a
    multiple of one model per number of ingredients; ``None`` without matplotlib."""
    from benchmarks import plotting

    plt = common.pyplot()
    if plt is None:
        return None
    mk, rows = result.get("mergekit") or {}, result["scaling"]["rows"]
    panels = ["mergekit"] if "time_ratio" in mk else []
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.5 * (len(panels) + 1) + 1, 3.6), squeeze=False)
    if panels:
        plotting.ratio_bars(axes[0][0], ["wall time", "peak RSS"], {"ours / mergekit": [mk["time_ratio"],
                            mk["memory_ratio"]]}, "uniform soup: ours / mergekit linear", "mergekit")
    counts = list(rows)
    plotting.ratio_bars(axes[0][-1], [f"{n} ingredients" for n in counts],
                        {"ours": [rows[n]["above_imports_vs_one_model"] for n in counts]},
                        "our peak RSS above the imports / one model", "one model")
    fig.suptitle(f"Model soups, {result['config']['model']} shape (CPU)", fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)


if __name__ == "__main__":
    main()
