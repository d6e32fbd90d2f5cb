"""``python -m benchmarks.perf.fsdp_memory``: per-rank training state under FSDP2 on CPU at world sizes 1, 2, 4.

For each world size N, one launch (``accelerate launch`` with an FSDP2 config, gloo, ``fully_shard`` per decoder
layer; N = 1 a plain process, nothing sharded) trains every row in turn (:mod:`benchmarks.perf.fsdp_worker`) on
the 85M shape for ``--steps`` steps (batch 1 × 32 per rank) and each rank counts the bytes it holds: local
parameter shards (frozen base included), gradients before the step, optimizer state after it (the sparse engine's
compact state for LIFT). Counting is exact and deterministic, so the goals are judged on it; the peak RSS a row
added to its rank is a secondary column (it includes activations and transient buffers).

Goals (issue 18): per rank, max over ranks, ``state(N) <= 1.1 × state(1) / N`` for every row, and LIFT's state
over LoRA's at each N no worse than at N = 1. Both are judged twice: on the whole persistent state (parameters +
gradients + optimizer state) and on the training state alone (gradients + optimizer state), since the frozen
base, which FSDP shards for every row alike, dominates the first.

Writes ``fsdp.json``, ``fsdp.md`` and ``fsdp.png`` to ``--out`` (default ``benchmarks/results/perf-fsdp-cpu``).
``--smoke``: the tiny shape at world sizes 1 and 2 (what CI affords).
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

MB = 2**20
#: (table name, row of benchmarks/methods.py): LoRA r=8 as the perf harness configures it, the tuners with their
#: plugin defaults (bottleneck-series is the bottleneck plugin's default preset), LIFT at LoRA r=16's budget and
#: its lean variant (updated inside the backward, no delta, no clipping).
ROWS = {"lora": "lora-r8", "ssf": "ssf", "bottleneck": "bottleneck-series", "lift": "lift-lora-budget",
        "lift-lean": "lift-lean"}
LIFT_ROWS = ("lift", "lift-lean")
SLACK = 1.1
FSDP2_CPU = dict(
    compute_environment="LOCAL_MACHINE", distributed_type="FSDP", num_machines=1, mixed_precision="no", use_cpu=True,
    dynamo_config={}, fsdp_config=dict(fsdp_version=2, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                                       fsdp_state_dict_type="FULL_STATE_DICT", fsdp_reshard_after_forward=True),
)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsdp_worker.py")


def row_specs(names: list[str]):
    """The method specs of table rows ``names``, renamed to the table's names."""
    import dataclasses

    from benchmarks.methods import BY_NAME

    return [dataclasses.replace(BY_NAME[ROWS[name]], name=name) for name in names]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(world: int, rows: list[str], model: str, steps: int, timeout: int, log) -> list[dict[str, Any]]:
    """Run the worker on ``world`` processes; each rank's ``{row: counts}``."""
    import yaml

    folder = tempfile.mkdtemp(prefix="ftplugins-fsdp-mem-")
    try:
        worker_args = [WORKER, folder, model, str(steps), "1", "32", *rows]
        if world == 1:
            command = [sys.executable, *worker_args]
        else:
            config = os.path.join(folder, "fsdp2_cpu.yaml")
            with open(config, "w") as handle:
                yaml.safe_dump({**FSDP2_CPU, "num_processes": world, "main_process_port": free_port()}, handle)
            accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
            command = [accelerate, "launch", "--config_file", config, *worker_args]
        env = {**os.environ, "PYTHONPATH": common.REPO_ROOT, "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=common.REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        log(f"world size {world}: {time.perf_counter() - started:.0f} s, exit {done.returncode}")
        ranks = []
        for rank in range(world):
            path = os.path.join(folder, f"rank-{rank}.json")
            if not os.path.exists(path):
                raise SystemExit(f"world size {world}: rank {rank} wrote no result (exit {done.returncode}):\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
            with open(path) as handle:
                ranks.append(json.load(handle)["rows"])
        return ranks
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KEYS = ("param_bytes", "grad_bytes", "optimizer_bytes", "persistent_bytes", "training_state_bytes",
        "peak_rss_above_start_bytes")


def summarize(per_world: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per row and world size: the max over ranks of every count, the ratios to state(1) / N and to LoRA, verdicts."""
    rows: dict[str, dict[str, Any]] = {}
    for world, ranks in per_world.items():
        for name in ranks[0]:
            entries = [rank[name] for rank in ranks]
            failed = [e for e in entries if e["status"] != "ok"]
            if failed:
                rows.setdefault(name, {})[str(world)] = {"status": "error", "reason": failed[0]["reason"]}
                continue
            if world > 1 and not all(e["fsdp"] and e["sharded_parameters"] > 0 for e in entries):
                rows.setdefault(name, {})[str(world)] = {"status": "error", "reason": "not sharded: FSDP was not on"}
                continue
            cell = {"status": "ok", "ranks": entries, "fsdp": world > 1}
            for key in KEYS:
                values = [e[key] for e in entries if e.get(key) is not None]
                cell[key] = max(values) if values else None
            rows.setdefault(name, {})[str(world)] = cell
    for name, cells in rows.items():
        one = cells.get("1", {})
        for world, cell in cells.items():
            if cell["status"] != "ok" or one.get("status") != "ok":
                continue
            for key in ("persistent_bytes", "training_state_bytes"):
                cell[f"{key}_vs_even_share"] = common.ratio(cell[key], one[key] / int(world))
                cell[f"{key}_goal_met"] = cell[f"{key}_vs_even_share"] <= SLACK
    for name in LIFT_ROWS:
        for world, cell in rows.get(name, {}).items():
            lora = rows.get("lora", {}).get(world, {})
            if cell["status"] != "ok" or lora.get("status") != "ok":
                continue
            for key in ("persistent_bytes", "training_state_bytes"):
                cell[f"{key}_vs_lora"] = common.ratio(cell[key], lora[key])
    for name in LIFT_ROWS:
        cells = rows.get(name, {})
        base = cells.get("1", {})
        for world, cell in cells.items():
            for key in ("persistent_bytes", "training_state_bytes"):
                if f"{key}_vs_lora" in cell and f"{key}_vs_lora" in base:
                    # "No worse": within 1% of the 1-process ratio (the counts are exact; 1% absorbs uneven rows).
                    cell[f"{key}_vs_lora_goal_met"] = cell[f"{key}_vs_lora"] <= base[f"{key}_vs_lora"] * 1.01
    return rows


def _mb(value) -> str:
    return common.fmt(None if value is None else value / MB, ".2f")


def markdown(result: dict[str, Any]) -> str:
    """One line per row and world size: max-over-ranks counts, the ratios and the verdicts."""
    header = ["method", "N", "params MB", "grads MB", "optim MB", "persistent MB", "× state(1)/N",
              "training state MB", "× state(1)/N", "× LoRA (persistent / training)", "peak RSS +MB"]
    lines = []
    for name, cells in result["rows"].items():
        for world, cell in cells.items():
            if cell["status"] != "ok":
                lines.append([f"`{name}`", world, "error: " + cell["reason"][:100]] + [""] * (len(header) - 3))
                continue

            def verdict(key: str) -> str:
                ratio = common.fmt(cell.get(f"{key}_vs_even_share"), ".3f")
                met = cell.get(f"{key}_goal_met")
                return ratio if met is None else f"{ratio} {'✓' if met else '✗'}"

            vs_lora = ""
            if "persistent_bytes_vs_lora" in cell:
                marks = ["" if cell.get(f"{k}_vs_lora_goal_met") is None else
                         (" ✓" if cell[f"{k}_vs_lora_goal_met"] else " ✗")
                         for k in ("persistent_bytes", "training_state_bytes")]
                vs_lora = (f"{common.fmt(cell['persistent_bytes_vs_lora'], '.3f')}{marks[0]} / "
                           f"{common.fmt(cell['training_state_bytes_vs_lora'], '.3f')}{marks[1]}")
            lines.append([f"`{name}`", world, _mb(cell["param_bytes"]), _mb(cell["grad_bytes"]),
                          _mb(cell["optimizer_bytes"]), _mb(cell["persistent_bytes"]), verdict("persistent_bytes"),
                          _mb(cell["training_state_bytes"]), verdict("training_state_bytes"), vs_lora,
                          common.fmt(None if cell["peak_rss_above_start_bytes"] is None
                                     else cell["peak_rss_above_start_bytes"] / MB, ".0f")])
    config = result["config"]
    intro = (f"Model `{config['model']}`, {config['steps']} steps, batch 1 × 32 per rank; every byte count is the "
             "max over ranks. ✓ / ✗: the goal met / missed (≤ 1.1 × state(1)/N; LIFT × LoRA no worse than at "
             "N = 1).\n\n")
    return intro + common.markdown_table(header, lines)


def plot(result: dict[str, Any], path: str) -> str | None:
    """Per method and world size N, the persistent and the training state (max over ranks) as a multiple of an
    even share, state(1)/N (1 = perfect sharding); ``None`` without matplotlib."""
    from benchmarks import plotting

    plt = common.pyplot()
    if plt is None:
        return None
    names = list(result["rows"])
    worlds = [str(w) for w in result["config"]["world_sizes"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.2 * len(names) + 4), 3.8))
    for ax, key, what in ((axes[0], "persistent_bytes", "persistent state"),
                          (axes[1], "training_state_bytes", "training state (grads + optimizer)")):
        groups = {f"N={w}": [result["rows"][n].get(w, {}).get(f"{key}_vs_even_share") for n in names]
                  for w in worlds}
        plotting.ratio_bars(ax, names, groups, f"{what}, max over ranks / (state at N=1 / N)", "even share",
                            legend="processes")
    fig.suptitle(f"FSDP on CPU, model {result['config']['model']}: how evenly N processes share the state", fontsize=9)
    fig.tight_layout()
    return plotting.save(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.fsdp_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--model", default="85m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per launch")
    parser.add_argument("--smoke", action="store_true", help="the tiny shape, world sizes 1 and 2 (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/perf-fsdp-cpu)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a tree with uncommitted changes, labelled dirty: true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.world_sizes = "tiny", [1, 2]
    if 1 not in args.world_sizes:
        raise SystemExit("--world-sizes must include 1: every ratio is to the 1-process state")
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    common.offline_environment()
    machine = common.machine_info("cpu", dirty=dirty)  # before the launches: the tree as it ran
    started = time.perf_counter()
    per_world = {world: launch(world, args.rows, args.model, args.steps, args.timeout, print)
                 for world in sorted(args.world_sizes)}
    result = {
        "harness": "perf.fsdp_memory",
        "config": {"model": args.model, "steps": args.steps, "world_sizes": sorted(args.world_sizes),
                   "rows": {name: ROWS[name] for name in args.rows}, "batch_per_rank": "1x32", "slack": SLACK,
                   "smoke": args.smoke},
        "machine": machine,
        "rows": summarize(per_world),
    }
    result["elapsed_s"] = time.perf_counter() - started
    out = args.out or os.path.join(common.RESULTS_DIR, "perf-fsdp-cpu")
    published = common.publish(out, "fsdp", result, markdown(result))
    plot(result, os.path.join(out, "fsdp.png"))
    return published


if __name__ == "__main__":
    main()
