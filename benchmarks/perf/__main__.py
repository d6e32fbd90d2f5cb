"""``python -m benchmarks.perf``: speed and memory of every method vs full fine-tuning and PEFT LoRA.

Examples::

    python -m benchmarks.perf --smoke --out /tmp/perf            # what CI runs: tiny model, seconds
    python -m benchmarks.perf                                    # 85M Llama, batches 1x32 and 4x128
    python -m benchmarks.perf --methods ssf,bottleneck-pfeiffer --batch 1x32 --repeats 5
    python -m benchmarks.perf --peer adapters                    # + AdapterHub in its own venv

Writes ``perf.json`` (raw numbers and the machine), ``perf.md`` (ratio tables) and ``perf.png``
(when matplotlib is installed) to ``--out`` (default ``benchmarks/results/perf-<model>-<device>/``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from benchmarks import common, methods
from benchmarks.perf import harness, report


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1x32, two timed steps (CI)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/perf-<model>-<device>)")
    parser.add_argument("--methods", help=f"comma-separated rows of benchmarks/methods.py (default: all perf rows; "
                                          f"baselines always run). Rows: {', '.join(methods.BY_NAME)}")
    parser.add_argument("--model", choices=list(harness.MODELS), help="model shape (default 85m; smoke: tiny)")
    parser.add_argument("--batch", help="comma-separated BATCHxTOKENS shapes (default 1x32,4x128; smoke: 1x32)")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per run (default 10; smoke: 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; smoke: 1; at least 1)")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions (default 3; smoke: 1)")
    parser.add_argument("--inference-repeats", type=int, help="timed forward passes per model (default 5; smoke: 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-overhead", action="store_true", help="skip the plain-TRL / no-op plugin rows and the "
                                                                   "`ftplugins list` timing")
    parser.add_argument("--peer", choices=["adapters"], help="also measure a peer library in its own venv "
                                                              "(benchmarks/.peer-venv; needs PyPI the first time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record results from a git tree with uncommitted changes, labelled dirty: true "
                             "(refused otherwise; --smoke runs are never committed and need no flag)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {"model": "tiny" if smoke else "85m", "batch": "1x32" if smoke else "1x32,4x128", "steps": 2 if smoke else 10,
                    "warmup": 1 if smoke else 2, "repeats": 1 if smoke else 3, "inference_repeats": 2 if smoke else 5}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step pays one-off costs)")
    return args


def device_tag(device: str, name: str) -> str:
    return "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dirty = common.require_clean_tree(args.allow_dirty or args.smoke)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up live when piped
    common.offline_environment()
    common.quiet_warnings()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.pick_device(args.device)
    machine = common.machine_info(device, dirty=dirty)
    out = args.out or os.path.join(common.RESULTS_DIR, f"perf-{args.model}-{device_tag(device, machine['device_name'])}")
    shapes = [harness.Shape.parse(s) for s in args.batch.split(",") if s.strip()]

    specs, skipped = [], {}
    for spec in methods.select(args.methods, "perf"):
        reason = methods.unavailable_reason(spec)
        if reason is None:
            specs.append(spec)
        elif spec.baseline:
            raise SystemExit(f"baseline {spec.name} cannot run: {reason}")
        else:
            skipped[spec.name] = reason
            print(f"skip {spec.name}: {reason}")
    if not args.no_overhead:
        specs += harness.overhead_specs()

    from ftplugins.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    template = harness.build_model(args.model, seed=args.seed)
    params = sum(p.numel() for p in template.parameters())
    print(f"perf: model {args.model} ({params:,} parameters) on {machine['device_name']}, "
          f"{torch.get_num_threads()} threads; batches {', '.join(map(str, shapes))}; "
          f"rows: {', '.join(s.name for s in specs)}")

    started = time.perf_counter()
    results = {}
    for shape in shapes:
        measured = harness.measure_shape(
            specs, template, tokenizer, shape, device=device, warmup=args.warmup, steps=args.steps,
            repeats=args.repeats, inference_repeats=args.inference_repeats, seed=args.seed,
        )
        results[str(shape)] = harness.summarize(specs, measured)

    # TRL's default for every row and the floor alike (the floor applies the rows' own arguments); the peer shares it
    checkpointing = harness.sft_args("unused", device, shapes[0], 1, args.seed).activation_checkpointing
    result = {
        "harness": "perf",
        "config": {
            "model": args.model,
            "model_shape": harness.MODELS[args.model],
            "model_params": params,
            "vocab_size": template.config.vocab_size,
            "dtype": "float32",
            "batches": [str(s) for s in shapes],
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "inference_repeats": args.inference_repeats,
            "seed": args.seed,
            "loop": "ftplugins.compose(trl.SFTTrainer, plugins, **options).train() (LoRA via peft_config=); step "
                    "time = wall time between consecutive on_step_end callbacks (batch fetch + collate + "
                    "forward + backward + clip + AdamW + scheduler), random token ids (random-text prompt/completion "
                    "rows for the plugins that read text), lr 1e-4 constant",
            "activation_checkpointing": checkpointing,
        },
        "machine": machine,
        "memory_method": common.PeakMemory(device).method,
        "results": results,
        "skipped": skipped,
        "elapsed_s": None,
    }
    if not args.no_overhead:
        result["cli"] = harness.cli_startup_seconds(runs=2 if args.smoke else 5)
    if args.peer:
        from benchmarks.perf import peer

        result["peers"] = peer.run(args.peer, model=args.model, shapes=[str(s) for s in shapes], steps=args.steps,
                                   warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                                   activation_checkpointing=checkpointing)
    result["elapsed_s"] = time.perf_counter() - started

    common.write_json(os.path.join(out, "perf.json"), result)
    common.write_text(os.path.join(out, "perf.md"), report.markdown(result))
    png = report.plot(result, os.path.join(out, "perf.png"))
    print(report.markdown(result))
    print(f"wrote {out}/perf.json, perf.md" + (", perf.png" if png else " (no PNG: pip install matplotlib)"))
    return result


if __name__ == "__main__":
    main()
