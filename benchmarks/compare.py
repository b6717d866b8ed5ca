"""Train-step speed of the same models in zoo, Flax's own building blocks and PyTorch, in one run.

    python benchmarks/compare.py            # full run, writes benchmarks/results.json and .md
    python benchmarks/compare.py --quick    # a few rounds, for a smoke test

Each implementation trains the same architecture on the same shapes with Adam (forward, backward,
update). Compile/warm-up time is reported separately; then rounds alternate between the
implementations so machine drift hits all alike, and the median ms/step is reported with
examples/s and the ratio to zoo (> 1: slower than zoo). Peers that are not installed are skipped
with a note. Keras 3 is not measured yet.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np
import optax

from zoo import models

Step = Callable[[], None]  # runs one train step and blocks until it is done


def jax_step(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Step:
    variables = model.init(jax.random.key(0), x)
    tx = optax.adam(1e-3)
    state = [variables["params"], tx.init(variables["params"])]

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    x, y = jax.device_put(x), jax.device_put(y)

    def run():
        state[:] = step(*state, x, y)
        jax.block_until_ready(state)

    return run


class FlaxCNN(nn.Module):
    """The seed CNN from Flax's stock layers (`nn.max_pool` lowers to `reduce_window`)."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)).reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


class FlaxLSTM(nn.Module):
    """Two LSTM(128) layers from `nn.RNN(nn.OptimizedLSTMCell)`, then Dense(10)."""

    @nn.compact
    def __call__(self, x):
        x = nn.RNN(nn.OptimizedLSTMCell(128))(x)
        x = nn.RNN(nn.OptimizedLSTMCell(128))(x)
        return nn.Dense(10)(x[:, -1])


def torch_step(kind: str, x: np.ndarray, y: np.ndarray) -> Step:
    import torch

    torch.manual_seed(0)
    if kind == "cnn":
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(576, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
        )  # fmt: skip
        inputs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NCHW
    else:
        lstm = torch.nn.LSTM(x.shape[-1], 128, num_layers=2, batch_first=True)
        head = torch.nn.Linear(128, 10)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm, self.head = lstm, head

            def forward(self, v):
                return self.head(self.lstm(v)[0][:, -1])

        net, inputs = Net(), torch.from_numpy(x)
    labels = torch.from_numpy(y).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), labels).backward()
        optimizer.step()

    return run


BENCHMARKS = {
    # name: (batch, example shape, zoo model, flax model)
    "cnn": (128, (28, 28, 1), lambda: models.create("cnn"), FlaxCNN),
    "lstm": (64, (28, 28), lambda: models.create("lstm", input_shape=(28, 28)), FlaxLSTM),
}


def measure(steps: dict[str, Step], rounds: int, steps_per_round: int) -> dict[str, dict]:
    compile_seconds = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()  # compile (JAX) or allocate (PyTorch)
        step()
        compile_seconds[name] = time.perf_counter() - start
    times = {name: [] for name in steps}
    for _ in range(rounds):  # interleaved: each round times every implementation once
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            times[name].append((time.perf_counter() - start) / steps_per_round)
    return {
        name: {"median_ms": 1e3 * statistics.median(t), "warmup_seconds": compile_seconds[name]}
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    rounds, per_round = (3, 2) if args.quick else (15, 10)
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
        print("note: torch not installed; PyTorch skipped (pip install torch)")
    results = {
        "machine": f"{platform.machine()} x{os.cpu_count()}, {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "torch": torch.__version__ if torch else None,
        "rounds": rounds,
        "steps_per_round": per_round,
        "benchmarks": {},
    }
    rows = []
    for name, (batch, shape, zoo_model, flax_model) in BENCHMARKS.items():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, *shape)).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int32)
        steps = {"zoo": jax_step(zoo_model(), x, y), "flax": jax_step(flax_model(), x, y)}
        if torch:
            steps["pytorch"] = torch_step(name, x, y)
        timings = measure(steps, rounds, per_round)
        for impl, t in timings.items():
            t["examples_per_second"] = batch / (t["median_ms"] / 1e3)
            t["ratio_to_zoo"] = t["median_ms"] / timings["zoo"]["median_ms"]
            rows.append(
                f"| {name} train step | {impl} | {t['median_ms']:.2f} | "
                f"{t['examples_per_second']:,.0f} | {t['ratio_to_zoo']:.2f} | "
                f"{t['warmup_seconds']:.2f} |"
            )
        results["benchmarks"][name] = {"batch": batch, "shape": shape, "timings": timings}
    table = "\n".join(
        [
            f"Machine: {results['machine']}; jax {results['jax']}, torch {results['torch']}; "
            f"median of {rounds} interleaved rounds of {per_round} steps.",
            "",
            "| benchmark | implementation | median ms/step | examples/s | time / zoo's "
            "| warm-up s |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
