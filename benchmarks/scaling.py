"""Data-parallel scaling: zoo's train step on 1, 2, 4, 8 devices, as examples/s and efficiency.

    python benchmarks/scaling.py                    # sharding, writes benchmarks/scaling.json
    python benchmarks/scaling.py --parallel pmap
    python benchmarks/scaling.py --quick            # a few rounds, for a smoke test

Weak scaling: every device gets `--per-device-batch` examples, so `n` devices run a global batch
`n` times larger, and perfect scaling keeps the step time flat. Efficiency is
`examples/s(n) / (n * examples/s(1))`. The step is zoo's own (`zoo.training.parallel`): the
jitted train step with the state donated, and batches placed by `put_batch`, prefetched two ahead.
Rounds alternate between device counts so machine drift hits all alike; the median ms/step is
reported.

On a CPU-only machine the devices are forced host devices (`--xla_force_host_platform_device_count`)
sharing the machine's cores, so past the core count the figures show the layout's overhead, not
more hardware. On a GPU or TPU machine the script runs unchanged on the real devices.
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

DEVICE_COUNTS = (1, 2, 4, 8)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", choices=("sharding", "pmap"), default="sharding")
    parser.add_argument("--devices", default=",".join(map(str, DEVICE_COUNTS)))
    parser.add_argument("--models", default="cnn,lstm")
    parser.add_argument("--per-device-batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling.json")
    )
    args = parser.parse_args(argv)
    counts = args.devices.split(",")
    if not all(n.isdigit() and int(n) > 0 for n in counts):
        parser.error(f"--devices takes positive counts such as 1,2,4,8; got {args.devices}")
    args.devices = [int(n) for n in counts]
    unknown = sorted(set(args.models.split(",")) - {"cnn", "lstm"})
    if unknown:
        parser.error(f"--models takes cnn and/or lstm; got {', '.join(unknown)}")
    if args.per_device_batch < 1:
        parser.error(f"--per-device-batch must be >= 1, got {args.per_device_batch}")
    return args


ARGS = parse_args(sys.argv[1:])
COUNTS = ARGS.devices
# Before JAX starts: on CPU this makes the host devices; on GPU/TPU it only adds unused CPU ones.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(COUNTS)}"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from zoo import models  # noqa: E402
from zoo.data.batching import Batch  # noqa: E402
from zoo.runtime import reuse_freed_memory, run_steps_inline  # noqa: E402
from zoo.training import TrainConfig, create_train_state  # noqa: E402
from zoo.training import parallel as parallel_lib  # noqa: E402

BENCHMARKS = {  # name: (example shape, model factory); the seed CNN and LSTM of compare.py
    "cnn": ((28, 28, 1), lambda: models.create("cnn")),
    "lstm": ((28, 28), lambda: models.create("lstm", input_shape=(28, 28))),
}


def make_runner(name: str, layout: parallel_lib.DataParallel, batch_size: int):
    """A function running `k` train steps on `layout` and waiting for the last one."""
    shape, factory = BENCHMARKS[name]
    model = layout.prepare_model(factory())
    index, count = layout.shard()
    rng = np.random.default_rng(index)
    local = batch_size // count
    x = rng.normal(size=(local, *shape)).astype(np.float32)
    y = rng.integers(0, 10, local).astype(np.int32)
    host_batch = Batch(x, y, np.ones(local, bool))
    config = TrainConfig(model=name, batch_size=batch_size)  # Adam, no augmentation
    state = [layout.put(create_train_state(model, config, x[:1]))]

    def run(steps: int) -> None:
        batches = parallel_lib.prefetch(itertools.repeat(host_batch, steps), layout.put_batch)
        for batch in batches:
            state[0], metrics = layout.train_step(state[0], batch)
        jax.block_until_ready((state[0], metrics))

    return run


def main() -> None:
    reuse_freed_memory()  # as train.py does
    run_steps_inline()
    available = jax.devices()
    counts = [n for n in COUNTS if n <= len(available)]
    if len(counts) < len(COUNTS):
        print(f"note: only {len(available)} devices; measuring {counts}")
    rounds, per_round = (3, 2) if ARGS.quick else (10, 10)
    results = {
        "machine": f"{platform.machine()} x{os.cpu_count()}, {available[0].device_kind}",
        "platform": available[0].platform,
        "jax": jax.__version__,
        "parallel": ARGS.parallel,
        "per_device_batch": ARGS.per_device_batch,
        "rounds": rounds,
        "steps_per_round": per_round,
        "benchmarks": {},
    }
    rows = []
    for name in ARGS.models.split(","):
        runners, warmup = {}, {}
        for n in counts:
            layout = parallel_lib.create(ARGS.parallel, available[:n])
            runners[n] = make_runner(name, layout, n * ARGS.per_device_batch)
            start = time.perf_counter()
            runners[n](2)  # compile
            warmup[n] = time.perf_counter() - start
        times = {n: [] for n in counts}
        for _ in range(rounds):
            for n in counts:
                start = time.perf_counter()
                runners[n](per_round)
                times[n].append((time.perf_counter() - start) / per_round)
        timings = {}
        for n in counts:
            ms = 1e3 * statistics.median(times[n])
            rate = n * ARGS.per_device_batch / (ms / 1e3)
            timings[n] = {"median_ms": ms, "examples_per_second": rate, "warmup_seconds": warmup[n]}
        base = timings[counts[0]]["examples_per_second"] / counts[0]
        for n, t in timings.items():
            t["efficiency"] = t["examples_per_second"] / (n * base)
            rows.append(
                f"| {name} | {n} | {n * ARGS.per_device_batch} | {t['median_ms']:.2f} | "
                f"{t['examples_per_second']:,.0f} | {t['efficiency']:.2f} |"
            )
        results["benchmarks"][name] = {str(n): t for n, t in timings.items()}
    print(
        f"{results['machine']} ({results['platform']}), jax {results['jax']}, --parallel "
        f"{ARGS.parallel}, {ARGS.per_device_batch} examples per device; median of {rounds} "
        f"interleaved rounds of {per_round} steps\n"
    )
    print("| model | devices | global batch | ms/step | examples/s | efficiency |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    with open(ARGS.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {ARGS.out}")


if __name__ == "__main__":
    main()
