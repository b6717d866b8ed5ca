"""How the cost of zoo's train step grows with the work, against PyTorch's: a scaling table.

    python benchmarks/sizes.py                 # every sweep; writes benchmarks/sizes.json, sizes.md
    python benchmarks/sizes.py --only lstm     # the LSTM's sweeps (or --only cnn)
    python benchmarks/sizes.py --quick --out /tmp/sizes  # 2 points a sweep, 3 rounds: a smoke test

Each sweep varies one axis from a base point, compare.py's benchmark of the same name: the
2-layer LSTM on `(steps, 28)` inputs (base: batch 64, 28 steps, hidden 128) over batch 32-512,
sequence length 25-400 and hidden size 64-1024; the seed CNN on 28x28x1 (base: batch 128) over
batch 32-512. Every point is compare.py's train step (forward, backward, Adam update) built by
`compare.implementations` (without its Flax peer), zoo's as zoo's training
compiles it, against PyTorch's; the base point is measured once and shown in every sweep (28
steps joins the sequence lengths). Rounds alternate between the two as in compare.py, and
the median ms/step is reported, with examples/s and the ratio PyTorch / zoo (> 1: zoo is
faster). Zoo's compile time, the XLA compilation of its train step, is reported apart: it is
paid once per shape, not per step.

A point gets compare.py's 15 rounds of 10 steps, fewer where its steps are slow: a step of each,
timed after a first one, sets them so that its timed rounds take about `--seconds` (5 rounds of
1 step at least). With the defaults the full run should take 8-10 minutes on a 2-core CPU (an
estimate from single steps of the slowest points, hidden 1024 and 400 steps, and the build of
each point, 2026-12-04). Results are rewritten after every point, so a killed run keeps what it
measured. Without torch, zoo alone.
"""

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import sys
import time

import compare  # benchmarks/compare.py, beside this script
import data_parallel  # benchmarks/data_parallel.py, beside this script
import jax

from zoo.runtime import reuse_freed_memory, run_steps_inline
from zoo.training.parallel import SPLIT_WIDTH

BASES = {"lstm": compare.BENCHMARKS["lstm"], "cnn": compare.BENCHMARKS["cnn"]}
SWEEPS = {  # model: {axis: values}; each sweep varies one axis of the model's base point
    "lstm": {
        "batch": (32, 64, 128, 256, 512),
        "steps": (25, 50, 100, 200, 400),
        "hidden": (64, 128, 256, 512, 1024),
    },
    "cnn": {"batch": (32, 64, 128, 256, 512)},
}
EVEN = 0.05  # a ratio within 5% of 1 is called even: closer than this machine's run-to-run drift
MAX_ROUNDS, MAX_STEPS_PER_ROUND, MIN_ROUNDS = 15, 10, 5  # compare.py's defaults, and a floor


def point(base: compare.Benchmark, axis: str, value: int) -> compare.Benchmark:
    """`base` with one axis changed: batch, steps (the sequence length) or hidden."""
    if axis == "steps":
        return dataclasses.replace(base, shape=(value, *base.shape[1:]))
    return dataclasses.replace(base, **{axis: value})


def base_value(base: compare.Benchmark, axis: str) -> int:
    return base.shape[0] if axis == "steps" else getattr(base, axis)


def fixed_axes(model: str, axis: str) -> str:
    """The base point's other axes, as a sweep's title states them."""
    base = BASES[model]
    if model == "cnn":
        return "x".join(map(str, base.shape))
    others = [a for a in ("batch", "steps", "hidden") if a != axis]
    return ", ".join(f"{a} {base_value(base, a)}" for a in others)


def sweep_values(model: str, axis: str) -> list[int]:
    """The sweep's values with the base point's among them (28 steps joins 25-400)."""
    return sorted({*SWEEPS[model][axis], base_value(BASES[model], axis)})


def schedule(step_seconds: float, seconds: float) -> tuple[int, int]:
    """Rounds and steps per round for a point whose train steps take `step_seconds` (all the
    implementations' together): compare.py's 15 rounds of 10 steps, fewer steps per round where
    one round would pass `seconds / MAX_ROUNDS`, then fewer rounds, down to `MIN_ROUNDS` of 1."""
    per_round = max(1, min(MAX_STEPS_PER_ROUND, int(seconds / MAX_ROUNDS / step_seconds)))
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(seconds / (per_round * step_seconds))))
    return rounds, per_round


def measure_point(bench: compare.Benchmark, peers: dict, quick: bool, seconds: float) -> dict:
    """Zoo's and PyTorch's median train ms/step at `bench`, zoo's compile seconds, examples/s
    and the ratio PyTorch / zoo."""
    x, y = compare.batch(bench)
    impls = compare.implementations(bench, x, y, peers, "float32", flax=False)
    steps = {name: impls[name]["train"] for name in ("zoo", "pytorch") if name in impls}
    if quick:
        rounds, per_round = 3, 1  # the median of 3 drops one outlier; that of 2 is their mean
    else:
        for step in steps.values():
            step()  # zoo's first run after its compilation, PyTorch's allocations: not timed
        start = time.perf_counter()
        for step in steps.values():
            step()
        rounds, per_round = schedule(time.perf_counter() - start, seconds)
    timings = compare.measure(steps, rounds, per_round)
    flops = compare.rnn_flops(bench) if bench.kind in compare.RECURRENT else impls["zoo"]["flops"]
    timings["zoo"]["compile_seconds"] = impls["zoo"]["compile_seconds"]["train"]
    for t in timings.values():
        t["examples_per_second"] = bench.batch / (t["median_ms"] / 1e3)
        t["gflops"] = flops["train"] / (t["median_ms"] / 1e3) / 1e9 if flops["train"] else None
    del impls, steps  # the compiled steps and their buffers, before the next point's
    gc.collect()
    torch_ms = timings.get("pytorch", {}).get("median_ms")
    ratio = torch_ms / timings["zoo"]["median_ms"] if torch_ms else None
    return {
        **dataclasses.asdict(bench),
        "zoo_devices": data_parallel.zoo_devices(bench),
        "flops": flops["train"],
        "rounds": rounds,
        "steps_per_round": per_round,
        "timings": timings,
        "ratio": ratio,  # PyTorch / zoo: > 1, zoo is faster
    }


def faster(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if abs(ratio - 1) < EVEN:
        return "even"
    return "zoo" if ratio > 1 else "PyTorch"


def table(results: dict) -> str:
    torch_version, load = results["torch"], results["load_average"]
    lines = [
        f"Machine: {results['machine']}; jax {results['jax']}, "
        + (f"torch {torch_version}" if torch_version else "torch not installed: zoo alone")
        + f"; float32; {results['date']}"
        + (f"; load average {load:.2f} at the start" if load is not None else "")
        + f". `{results['command']}`",
        "",
        "Train step (forward, backward, Adam update), median ms/step of interleaved rounds; "
        "PyTorch / zoo > 1: zoo is faster (within 5%: even). Zoo's compile s: the XLA "
        "compilation of its train step, paid once per shape.",
    ]
    split = {p["zoo_devices"] for sweep in results["sweeps"].values() for p in sweep["points"]}
    if max(split, default=1) > 1:
        lines[-1] += (
            f" zoo's LSTM steps up to {SPLIT_WIDTH} wide split each batch over {max(split)} CPU "
            "devices (one per core), the wider ones run on one, as zoo's training does "
            "(zoo.training.parallel.default_cpu_devices)."
        )
    for name, sweep in results["sweeps"].items():
        model, axis = sweep["model"], sweep["axis"]
        lines += [
            "",
            f"### {name} ({fixed_axes(model, axis)})",
            "",
            f"| {axis} | zoo ms | PyTorch ms | PyTorch / zoo | faster | zoo examples/s "
            "| PyTorch examples/s | zoo compile s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in sweep["points"]:
            zoo, torch = p["timings"]["zoo"], p["timings"].get("pytorch")
            value = f"{p['value']} (base)" if p["base"] else str(p["value"])
            lines.append(
                f"| {value} | {zoo['median_ms']:.2f} | "
                + (f"{torch['median_ms']:.2f} | {p['ratio']:.2f} | " if torch else "- | - | ")
                + f"{faster(p['ratio'])} | {zoo['examples_per_second']:,.0f} | "
                + (f"{torch['examples_per_second']:,.0f} | " if torch else "- | ")
                + f"{zoo['compile_seconds']:.1f} |"
            )
    return "\n".join(lines)


def write(results: dict, out: str) -> None:
    with open(os.path.join(out, "sizes.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "sizes.md"), "w") as f:
        f.write(table(results) + "\n")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 points a sweep, 3 rounds of 1 step")
    parser.add_argument("--only", default="lstm,cnn", help="comma list of lstm, cnn")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="timed rounds of a slow point take about this"
    )
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    models = args.only.split(",")
    unknown = sorted(set(models) - set(SWEEPS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {list(SWEEPS)}")
    # As compare.py and train.py do: glibc keeps freed memory, and steps run inline to use it.
    reused = reuse_freed_memory()
    inline = run_steps_inline()
    # Before JAX starts: zoo's LSTM steps run on one CPU device per core, as in training.
    data_parallel.use_cpu_cores(BASES[m] for m in models)
    peers = {k: v for k, v in compare.available_peers().items() if k == "pytorch"}
    results = {
        "machine": f"{cpu_model()} x{os.cpu_count()}, {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "torch": peers.get("pytorch"),
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/sizes.py", *sys.argv[1:]]),
        "freed_memory_reused": reused,
        "steps_inline": inline,
        # Read it before trusting a ratio: other processes' work slows PyTorch's threads most
        # (one using 1.2 of 2 cores here made PyTorch's base LSTM step 0.2-2 s, not 15-20 ms).
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "seconds": args.seconds,
        "sweeps": {},
    }
    os.makedirs(args.out, exist_ok=True)
    measured = {}  # Benchmark: its point, so the base point is timed once
    for model in (m for m in SWEEPS if m in models):
        for axis in SWEEPS[model]:
            sweep = {"model": model, "axis": axis, "points": []}
            results["sweeps"][f"{model} {axis}"] = sweep
            for value in sweep_values(model, axis)[: 2 if args.quick else None]:
                bench = point(BASES[model], axis, value)
                if bench not in measured:
                    start = time.perf_counter()
                    measured[bench] = measure_point(bench, peers, args.quick, args.seconds)
                    measured[bench]["wall_seconds"] = time.perf_counter() - start
                is_base = bench == BASES[model]
                sweep["points"].append({"value": value, "base": is_base, **measured[bench]})
                write(results, args.out)
                p = measured[bench]
                print(
                    f"{model} {axis} {value}: zoo {p['timings']['zoo']['median_ms']:.2f} ms"
                    + (f", PyTorch / zoo {p['ratio']:.2f}" if p["ratio"] else "")
                    + f" ({p['wall_seconds']:.0f} s)",
                    flush=True,
                )
    print(table(results))
    print(f"wrote {args.out}/sizes.json, sizes.md")


if __name__ == "__main__":
    main()
