"""Train-step and inference speed of the same models in zoo, Flax, PyTorch and Keras 3, in one run.

    python benchmarks/compare.py                  # every benchmark; writes benchmarks/results.*
    python benchmarks/compare.py --only cnn,lstm  # some of them
    python benchmarks/compare.py --only resnet18,mobilenet_v2 --out /tmp/cnn  # the CNN families
    python benchmarks/compare.py --only seq2seq --out /tmp/seq2seq  # encoder-decoder, attention
    python benchmarks/compare.py --quick          # a few rounds of the small sizes, a smoke test
    python benchmarks/compare.py --dtype bfloat16 # on GPU/TPU

Each implementation runs the same architecture on the same shapes: a train step (forward,
backward, Adam update) and inference (forward only). Warm-up (compilation) is timed separately;
then rounds alternate between the implementations so machine drift hits all alike (in a new order
each round, so none always follows the same peer), and the
median ms/step is reported with examples/s, the ratio to zoo (> 1: slower than zoo), the
achieved GFLOP/s (the same FLOP count for every implementation: XLA's cost analysis of zoo's
compiled CNN step, and the RNNs' and seq2seq's matmuls counted by hand) and its fraction of this
machine's peak, measured in the same run with a large matmul. Warm-up includes JAX's compile
time. Peers that are not installed are skipped with a note. Output: `results.json`,
`results.md` and, with matplotlib, `results.png` (examples/s), all of them rewritten with the
benchmarks of this run only: give `--out` for a partial run.

The CNN families (ResNet-18 with the CIFAR stem, MobileNetV2; their peers in `cnn_families.py`)
have batch norm: every train step uses batch statistics and updates the running ones (zoo and
Flax apply with `train=True, mutable=["batch_stats"]`, PyTorch in `train()` mode, Keras'
`train_on_batch`) and inference the running ones; the logit check compares both modes.

`seq2seq` is the registry's default `seq2seq` model (bidirectional LSTM(128) encoder, Bahdanau
attention, LSTM(128) decoder) on a batch of the `numbers` task (128 sources of 5 digits at most,
targets of 8 tokens), raced against PyTorch and Keras 3 peers in `seq2seq_peers.py` (no Flax
peer: zoo's model is one). Its train step is teacher forcing, the mean cross-entropy over the
targets' non-PAD tokens and an Adam update; inference is the same teacher-forced forward pass
(not greedy decoding).
"""

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable

import compiled  # benchmarks/compiled.py, beside this script
import data_parallel  # benchmarks/data_parallel.py, beside this script
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seq2seq_peers  # benchmarks/seq2seq_peers.py, beside this script
from cnn_families import (  # benchmarks/cnn_families.py, beside this script
    FAMILIES,
    keras_logits,
    torch_batch_statistics_logits,
)

from zoo import models, runtime
from zoo.layers.importers import (
    cnn_from_torch,
    dense_from_torch,
    from_flax_cell,
    from_keras,
    from_torch,
    keras_weights,
)
from zoo.layers.recurrent import GATES
from zoo.runtime import reuse_freed_memory, run_steps_inline

Step = Callable[[], None]  # runs one step and blocks until it is done


@dataclasses.dataclass(frozen=True)
class Benchmark:
    kind: str  # 'cnn', 'rnn', 'lstm', 'gru', 'seq2seq' or a key of `cnn_families.FAMILIES`
    batch: int
    shape: tuple[int, ...]  # one example; seq2seq: (source length, target length)
    hidden: int = 0  # recurrent width (two layers)


BENCHMARKS = {
    "cnn": Benchmark("cnn", 128, (28, 28, 1)),
    "rnn": Benchmark("rnn", 64, (28, 28), 128),
    "lstm": Benchmark("lstm", 64, (28, 28), 128),
    "gru": Benchmark("gru", 64, (28, 28), 128),
    "cnn_large": Benchmark("cnn", 512, (28, 28, 1)),
    "lstm_large": Benchmark("lstm", 64, (100, 28), 512),
    "gru_large": Benchmark("gru", 64, (100, 28), 512),
    "resnet18": Benchmark("resnet18", 128, (32, 32, 3)),  # CIFAR stem
    "mobilenet_v2": Benchmark("mobilenet_v2", 128, (32, 32, 3)),
    "seq2seq": Benchmark("seq2seq", 128, (5, 8)),  # the numbers task; its preset's batch
}
QUICK = ("cnn", "lstm", "gru")
RECURRENT = ("rnn", "lstm", "gru")


def jax_steps(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    dtype,
    to_zoo: Callable | None = None,
    jit: Callable = jax.jit,
    gradients: Callable = contextlib.nullcontext,
    compile: bool = True,
    devices: int = 1,
) -> dict[str, Step]:
    """Train and inference steps of a Flax module compiled by `jit`, their XLA FLOP counts, and
    (with `to_zoo`, which converts its variables) its initial logits and weights for the
    agreement check. The gradient is taken inside `gradients()`: zoo's row asks for its
    hand-written CPU gradients there, as zoo's own train step does.

    A model with batch norm (`batch_stats` among its variables) is called with `train=True,
    mutable=["batch_stats"]` in the train step, which carries the updated running statistics to
    the next step, as zoo's training does, and with `train=False` for inference; its logits are
    taken in both modes. `compile=False`: the logits and weights only, no steps. `devices` > 1
    (zoo's recurrent rows): each step splits the batch over that many CPU devices, as zoo's
    training does (`data_parallel.py`).
    """
    initial = jax.jit(model.init)(jax.random.key(0), x)  # the same values as eagerly, sooner
    params = compiled.cast(initial["params"], dtype)
    tx = optax.adam(1e-3)
    state = [params, initial.get("batch_stats"), tx.init(params)]  # batch_stats None: no norm
    x, y = jax.device_put(x.astype(dtype)), jax.device_put(y)

    def apply(params, batch_stats, x, train: bool):
        """The logits, and the running statistics (updated by a training-mode pass)."""
        if batch_stats is None:
            return model.apply({"params": params}, x), None
        variables = {"params": params, "batch_stats": batch_stats}
        if not train:
            return model.apply(variables, x, train=False), batch_stats
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def loss(p, batch_stats, x, y):
        logits, batch_stats = apply(p, batch_stats, x, train=True)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return losses.mean(), batch_stats

    def grad(params, batch_stats, x, y):
        with gradients():
            return jax.grad(loss, has_aux=True)(params, batch_stats, x, y)

    def infer(params, batch_stats, x):
        return apply(params, batch_stats, x, train=False)[0]

    if devices > 1:  # each device's rows; gradients and statistics averaged
        split = data_parallel.SplitBatch(devices, replicated=2)
        grad, infer = split.mean(grad, 4), split.rows(infer, 3)

    def train(params, batch_stats, opt_state, x, y):
        grads, batch_stats = grad(params, batch_stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    steps = {}
    if to_zoo is not None:  # running statistics, then batch statistics: one compilation
        modes = [False] if state[1] is None else [False, True]
        logits = jax.jit(lambda p, s, x: [apply(p, s, x, train)[0] for train in modes])
        values = logits(initial["params"], initial.get("batch_stats"), x.astype(np.float32))
        steps.update(zip(["logits", "train_logits"], map(np.asarray, values), strict=False))
        steps["zoo_variables"] = to_zoo(initial)
    if not compile:
        return steps
    if devices > 1:
        state, x, y = split.whole(state), split.split(x), split.split(y)
    return steps | compiled.compile_steps(jit, train, state, (x, y), infer, lambda s: (*s[:2], x))


def rnn_flops(bench: Benchmark) -> dict[str, float]:
    """Matmul FLOPs of the two-layer RNN and its head, counted by hand: XLA's cost analysis does
    not multiply a scan body by its trip count. Training counts 3x inference (forward, and the
    two matmuls per forward one in the backward pass)."""
    gates = GATES[bench.kind]
    steps, features = bench.shape
    per_step = sum(
        2 * bench.batch * (width + bench.hidden) * gates * bench.hidden
        for width in (features, bench.hidden)
    )
    infer = steps * per_step + 2 * bench.batch * bench.hidden * 10
    return {"train": 3.0 * infer, "infer": float(infer)}


class FlaxCNN(nn.Module):
    """The seed CNN from Flax's stock layers (`nn.max_pool` lowers to `reduce_window`)."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64)(x))  # created before Dense(10): the names match zoo's
        return nn.Dense(10)(x)


FLAX_CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class FlaxRNN(nn.Module):
    """Two `nn.RNN` layers of `nn.SimpleCell`, `nn.OptimizedLSTMCell` or `nn.GRUCell`, then
    Dense(10)."""

    cell: str
    hidden: int

    @nn.compact
    def __call__(self, x):
        cell = FLAX_CELLS[self.cell]
        x = nn.RNN(cell(self.hidden))(x)
        x = nn.RNN(cell(self.hidden))(x)
        return nn.Dense(10)(x[:, -1])


def flax_to_zoo(bench: Benchmark, variables: dict) -> dict:
    """FlaxCNN's variables already have zoo's names and layout; FlaxRNN's cells go through
    `from_flax_cell`, the CNN families through their converters."""
    if bench.kind in FAMILIES:
        return FAMILIES[bench.kind].flax_to_zoo(variables)
    if bench.kind == "cnn":
        return variables
    params = variables["params"]
    cell = FLAX_CELLS[bench.kind].__name__  # as FlaxRNN's cells are named
    layers = {f"layer_{k}": from_flax_cell(params[f"{cell}_{k}"], bench.kind) for k in (0, 1)}
    return {"params": {"StackedRNN_0": layers, "Dense_0": params["Dense_0"]}}


def zoo_model(bench: Benchmark) -> nn.Module:
    if bench.kind in FAMILIES:
        return FAMILIES[bench.kind].zoo(bench.shape)
    if bench.kind == "seq2seq":
        return models.create("seq2seq")
    if bench.kind == "cnn":
        return models.create("cnn", input_shape=bench.shape)
    return models.create(bench.kind, input_shape=bench.shape, hidden_sizes=(bench.hidden,) * 2)


def flax_model(bench: Benchmark) -> nn.Module:
    if bench.kind in FAMILIES:
        return FAMILIES[bench.kind].flax()
    return FlaxCNN() if bench.kind == "cnn" else FlaxRNN(bench.kind, bench.hidden)


def torch_steps(bench: Benchmark, x: np.ndarray, y: np.ndarray, dtype: str) -> dict[str, Step]:
    import torch

    torch.manual_seed(0)
    batch_norm = bench.kind in FAMILIES  # batch statistics in training, running ones otherwise
    if batch_norm:
        net = FAMILIES[bench.kind].torch()
        inputs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NCHW
        variables = FAMILIES[bench.kind].torch_to_zoo(net.state_dict())
    elif bench.kind == "cnn":
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(576, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
        )  # fmt: skip
        inputs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NCHW
        variables = {"params": cnn_from_torch(net.state_dict(), bench.shape)}
    else:
        rnn_class = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[bench.kind]
        rnn = rnn_class(x.shape[-1], bench.hidden, num_layers=2, batch_first=True)
        head = torch.nn.Linear(bench.hidden, 10)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn, self.head = rnn, head

            def forward(self, v):
                return self.head(self.rnn(v)[0][:, -1])

        net, inputs = Net(), torch.from_numpy(x)
        params = {
            "StackedRNN_0": from_torch(rnn.state_dict(), bench.kind),
            "Dense_0": dense_from_torch(head.weight, head.bias),
        }
        variables = {"params": params}
    net.eval()
    with torch.no_grad():
        logits = net(inputs).numpy()
    train_logits = torch_batch_statistics_logits(net, inputs) if batch_norm else None
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(device=device, dtype=torch_dtype)
    inputs = inputs.to(device=device, dtype=torch_dtype)
    labels = torch.from_numpy(y).long().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_train():
        if batch_norm:
            net.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs).float(), labels).backward()
        optimizer.step()
        sync()

    def run_infer():
        if batch_norm:
            net.eval()
        with torch.no_grad():
            net(inputs)
        sync()

    steps = {"train": run_train, "infer": run_infer, "logits": logits, "zoo_variables": variables}
    return steps | ({"train_logits": train_logits} if batch_norm else {})


def keras_steps(bench: Benchmark, x: np.ndarray, y: np.ndarray, dtype: str) -> dict[str, Step]:
    import keras

    keras.config.set_dtype_policy(dtype)
    keras.utils.set_random_seed(0)
    layers = keras.layers
    if bench.kind == "cnn":
        body = [
            layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.Flatten(),
            layers.Dense(64, activation="relu"),
        ]  # fmt: skip
    elif bench.kind in RECURRENT:
        rnn = {"rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}[bench.kind]
        body = [rnn(bench.hidden, return_sequences=True), rnn(bench.hidden)]
    if bench.kind in FAMILIES:
        with jax.numpy_rank_promotion("allow"):
            model = FAMILIES[bench.kind].keras(bench.shape)
    else:
        model = keras.Sequential([keras.Input(bench.shape), *body, layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    weights = [layer.get_weights() for layer in model.layers if layer.get_weights()]
    if bench.kind in FAMILIES:
        variables = FAMILIES[bench.kind].keras_to_zoo(keras_weights(model))
    elif bench.kind == "cnn":  # Keras' Conv2D and Dense layouts are zoo's
        names = ["Conv_0", "Conv_1", "Conv_2", "Dense_0", "Dense_1"]
        params = {n: {"kernel": w[0], "bias": w[1]} for n, w in zip(names, weights, strict=True)}
        variables = {"params": params}
    else:
        params = {
            "StackedRNN_0": from_keras(weights[:2], bench.kind),
            "Dense_0": {"kernel": weights[2][0], "bias": weights[2][1]},
        }
        variables = {"params": params}
    with jax.numpy_rank_promotion("allow"):
        if bench.kind in FAMILIES:
            logits, train_logits = keras_logits(model, x)
        else:
            logits = np.asarray(model.predict_on_batch(x), np.float32)

    def run_train():
        with jax.numpy_rank_promotion("allow"):  # Keras relies on implicit rank promotion
            model.train_on_batch(x, y)

    def run_infer():
        with jax.numpy_rank_promotion("allow"):
            model.predict_on_batch(x)

    steps = {"train": run_train, "infer": run_infer, "logits": logits, "zoo_variables": variables}
    return steps | ({"train_logits": train_logits} if bench.kind in FAMILIES else {})


def agreement(bench: Benchmark, x: np.ndarray, impls: dict[str, dict]) -> dict[str, float]:
    """Each peer's initial weights, imported into zoo's model: the largest absolute difference
    between zoo's logits and the peer's on the benchmark batch. Small values mean the
    implementations compute the same function, so the timings compare the same math.

    With batch norm, the larger difference of its two modes: running statistics (`train=False`)
    and batch statistics (`train=True`, the train step's). The first alone checks little at
    initial weights: with running statistics still 0 and 1, fifty layers shrink the signal to
    nothing and every example's logits are the head's bias."""
    model = zoo_model(bench)

    @jax.jit
    def logits(variables, x) -> list[jax.Array]:
        if bench.kind == "seq2seq":  # x: the sources, their lengths and the targets
            return [model.apply(variables, x.src, x.lengths, targets=x.targets)]
        if "batch_stats" not in variables:
            return [model.apply(variables, x)]
        train_mode, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return [model.apply(variables, x), train_mode]

    def difference(impl) -> float:
        ours = logits(impl["zoo_variables"], x)
        theirs = [impl["logits"], impl.get("train_logits")]
        return float(max(np.max(np.abs(a - b)) for a, b in zip(ours, theirs, strict=False)))

    return {name: difference(impl) for name, impl in impls.items() if "zoo_variables" in impl}


def peak_matmul_gflops(dtype, size: int = 2048, repeats: int = 10) -> float:
    """This machine's matmul GFLOP/s on the default device: the yardstick for 'fraction of
    peak'."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure(steps: dict[str, Step], rounds: int, steps_per_round: int) -> dict[str, dict]:
    warmup = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()  # compile (JAX, Keras) or allocate (PyTorch)
        step()
        warmup[name] = time.perf_counter() - start
    times = {name: [] for name in steps}
    for r in range(rounds):  # interleaved: each round times every implementation once
        # In a new order each round (seeded), so no implementation always follows the same one:
        # a peer's spinning worker threads slow whatever runs right after it.
        for name in random.Random(r).sample(list(steps), len(steps)):
            start = time.perf_counter()
            for _ in range(steps_per_round):
                steps[name]()
            times[name].append((time.perf_counter() - start) / steps_per_round)
    return {
        name: {"median_ms": 1e3 * statistics.median(t), "warmup_seconds": warmup[name]}
        for name, t in times.items()
    }


def available_peers() -> dict[str, object]:
    peers = {}
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        peers["pytorch"] = torch.__version__
    except ImportError:
        print("note: torch not installed; PyTorch skipped (pip install torch)")
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        print("note: KERAS_BACKEND is not 'jax'; Keras skipped")
    else:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        try:
            import keras

            peers["keras"] = keras.__version__
        except ImportError:
            print("note: keras not installed; Keras 3 skipped (pip install -e '.[keras]')")
    return peers


def batch(bench: Benchmark) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's inputs `(B, *shape)` and labels `(B,)`, the same for every implementation;
    seq2seq's inputs are `seq2seq_peers.Inputs` (sources, lengths, targets), its labels the
    targets."""
    if bench.kind == "seq2seq":
        inputs = seq2seq_peers.batch(bench.batch, *bench.shape)
        return inputs, inputs.targets
    rng = np.random.default_rng(0)
    x = rng.normal(size=(bench.batch, *bench.shape)).astype(np.float32)
    y = rng.integers(0, 10, bench.batch).astype(np.int32)
    return x, y


def implementations(
    bench: Benchmark, x, y, peers, dtype: str, compile: bool = True, flax: bool = True
) -> dict[str, dict]:
    """Every implementation's steps, and the peers' logits and weights in zoo's variables.
    `compile=False` (a test of `agreement`): no zoo, and no JAX steps compiled; `flax=False`:
    no Flax peer."""
    if bench.kind == "seq2seq":
        return seq2seq_implementations(bench, x, peers, dtype, compile)
    jax_dtype = jnp.dtype(dtype)
    impls = {}
    if compile:  # zoo's steps as zoo's training compiles them; Flax's with a plain jax.jit
        impls["zoo"] = jax_steps(
            zoo_model(bench),
            x,
            y,
            jax_dtype,
            jit=runtime.jit,
            gradients=runtime.hand_written_gradients,
            devices=data_parallel.zoo_devices(bench),
        )
    if flax:
        impls["flax"] = jax_steps(
            flax_model(bench), x, y, jax_dtype, lambda v: flax_to_zoo(bench, v), compile=compile
        )
    if "pytorch" in peers:
        impls["pytorch"] = torch_steps(bench, x, y, dtype)
    if "keras" in peers:
        impls["keras"] = keras_steps(bench, x, y, dtype)
    return impls


def seq2seq_implementations(
    bench: Benchmark, inputs: seq2seq_peers.Inputs, peers, dtype: str, compile: bool = True
) -> dict[str, dict]:
    """`implementations` of the seq2seq benchmark: zoo's steps as zoo's training compiles them,
    PyTorch's and Keras' peers from `seq2seq_peers.py`. No Flax peer (zoo's model is Flax)."""
    model = zoo_model(bench)
    impls = {}
    if compile:
        impls["zoo"] = seq2seq_peers.jax_steps(
            model,
            inputs,
            jnp.dtype(dtype),
            jit=runtime.jit,
            gradients=runtime.hand_written_gradients,
            devices=data_parallel.zoo_devices(bench),
        )
    if "pytorch" in peers:
        impls["pytorch"] = seq2seq_peers.torch_steps(model, inputs, dtype)
    if "keras" in peers:
        impls["keras"] = seq2seq_peers.keras_steps(model, inputs, dtype)
    return impls


def run_benchmark(name, bench, peers, dtype, rounds, per_round) -> dict:
    x, y = batch(bench)
    impls = implementations(bench, x, y, peers, dtype)
    if bench.kind == "seq2seq":
        flops = seq2seq_peers.flops(zoo_model(bench), x)
    elif bench.kind in RECURRENT:
        flops = rnn_flops(bench)
    else:
        flops = impls["zoo"]["flops"]
    result = {**dataclasses.asdict(bench), "flops": flops, "timings": {}}
    result["zoo_devices"] = data_parallel.zoo_devices(bench)
    result["max_logit_difference"] = agreement(bench, x, impls)
    for mode in ("train", "infer"):
        timings = measure({impl: s[mode] for impl, s in impls.items()}, rounds, per_round)
        for impl, t in timings.items():
            t["warmup_seconds"] += impls[impl].get("compile_seconds", {}).get(mode, 0.0)
            t["examples_per_second"] = bench.batch / (t["median_ms"] / 1e3)
            t["ratio_to_zoo"] = t["median_ms"] / timings["zoo"]["median_ms"]
            t["gflops"] = flops[mode] / (t["median_ms"] / 1e3) / 1e9 if flops[mode] else None
        result["timings"][mode] = timings
    return result


def verdict(name: str, bench: dict, mode: str = "train") -> str:
    """One line: whether zoo's `mode` step is the fastest of the implementations, with each
    peer's time over zoo's."""
    ratios = {i: t["ratio_to_zoo"] for i, t in bench["timings"][mode].items() if i != "zoo"}
    listed = ", ".join(f"{i} {r:.3g}x" for i, r in sorted(ratios.items(), key=lambda kv: kv[1]))
    slower = [i for i, r in ratios.items() if r < 1.0]
    if not ratios:
        return f"{name} {mode}: zoo alone"
    if slower:
        return (
            f"{name} {mode}: {', '.join(sorted(slower))} faster than zoo ({listed} of zoo's time)"
        )
    return f"{name} {mode}: zoo fastest ({listed} of zoo's time)"


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")


def machine() -> dict:
    """The CPU (its model, cores and the vector extensions XLA:CPU and PyTorch pick kernels by),
    the default device, and the versions of everything timed."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        cpu = re.search(r"^model name\s*:\s*(.*)$", info, re.M).group(1).strip()
        present = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
        flags = [flag for flag in CPU_FLAGS if flag in present]
    except (OSError, AttributeError):  # not Linux
        pass
    device = jax.devices()[0]
    versions = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "keras"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    name, kind = device.platform, device.device_kind  # "gpu (NVIDIA H200)"; "cpu", not "cpu (cpu)"
    xla = getattr(device.client, "platform_version", None)  # CUDA's version; the CPU's is "cpu"
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": runtime.cpu_cores(),
        "device": name if kind.lower() == name else f"{name} ({kind})",
        "xla": None if xla == name else xla,
        "versions": versions,
    }


def table(results: dict) -> str:
    peak = results["peak_gflops"]
    rows = []
    for name, bench in results["benchmarks"].items():
        for mode, timings in bench["timings"].items():
            for impl, t in timings.items():
                gflops = t["gflops"]
                difference = bench.get("max_logit_difference", {}).get(impl)
                rows.append(
                    f"| {name} | {mode} | {impl} | {t['median_ms']:.2f} | "
                    f"{t['examples_per_second']:,.0f} | {t['ratio_to_zoo']:.2f} | "
                    + (f"{gflops:.1f} | {gflops / peak:.0%} |" if gflops else "- | - |")
                    + f" {t['warmup_seconds']:.2f} | "
                    + (f"{difference:.1e} |" if difference is not None else "- |")
                )
    about = results["about"]
    versions = ", ".join(f"{k} {v}" for k, v in about["versions"].items() if v)
    device = about["device"] + (f", XLA {about['xla']}" if about["xla"] else "")
    split = {n: b["zoo_devices"] for n, b in results["benchmarks"].items() if b["zoo_devices"] > 1}
    verdicts = [verdict(n, b) for n, b in results["benchmarks"].items()]
    return "\n".join(
        [
            f"Machine: {about['cpu']} ({about['cores']} cores; {' '.join(about['cpu_flags'])}); "
            f"{device}; {versions}; {results['date']}.",
            "",
            f"{results['dtype']}; peak matmul {peak:.0f} GFLOP/s; "
            + (
                "freed memory reused (zoo.runtime, as train.py) for all; "
                if results.get("freed_memory_reused")
                else ""
            )
            + (
                "single-device JAX steps run inline (zoo.runtime.run_steps_inline, as train.py); "
                if results.get("steps_inline")
                else ""
            )
            + "zoo's steps compiled by zoo.runtime.jit (on CPU: XLA:CPU options of "
            "zoo.runtime.XLA_CPU_OPTIONS), the other JAX steps by jax.jit; "
            + (
                f"zoo's steps of {', '.join(split)} split the batch over one CPU device per "
                "core, as zoo's training does (zoo.training.parallel.default_cpu_devices); "
                if split
                else ""
            )
            + f"median of {results['rounds']} interleaved rounds of {results['steps_per_round']} "
            "steps. Last column: the largest |logit difference| between the implementation and "
            "zoo given its initial weights (imported into zoo), on the benchmark batch.",
            "",
            *[f"- {line}" for line in verdicts],
            "",
            "| benchmark | mode | implementation | median ms/step | examples/s | time / zoo's "
            "| GFLOP/s | of peak | warm-up s | logits vs zoo |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def plot(results: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed; no results.png")
        return False
    names = list(results["benchmarks"])
    impls = sorted(
        {i for b in results["benchmarks"].values() for i in b["timings"]["train"]},
        key=lambda i: (i != "zoo", i),
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    width = 0.8 / len(impls)
    for ax, mode in zip(axes, ("train", "infer"), strict=True):
        for k, impl in enumerate(impls):
            values = [
                results["benchmarks"][n]["timings"][mode].get(impl, {}).get("examples_per_second")
                or 0
                for n in names
            ]
            ax.bar(np.arange(len(names)) + k * width, values, width, label=impl)
        ax.set_xticks(np.arange(len(names)) + width * (len(impls) - 1) / 2, names, rotation=20)
        ax.set_title(f"{mode} step")
        ax.set_yscale("log")
    axes[0].set_ylabel("examples/s (higher is better)")
    axes[0].legend()
    fig.suptitle(results["machine"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds of 2 steps of cnn, lstm and gru (or --only's)",
    )
    parser.add_argument("--only", help=f"comma list of {', '.join(BENCHMARKS)}")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument(
        "--plain-malloc",
        action="store_true",
        help="leave glibc's defaults and JAX's asynchronous dispatch (by default freed memory is "
        "reused and single-device steps run inline, as train.py does)",
    )
    args = parser.parse_args()
    # Process-wide, so every implementation measured here gets the same allocator: train.py's.
    # Not one arena for every thread: with a step split over CPU devices, their threads then
    # queue on one heap lock (zoo's seq2seq step 21 -> 37 ms, the CNN 19 -> 24; NOTES.md).
    reused = not args.plain_malloc and reuse_freed_memory()
    inline = not args.plain_malloc and run_steps_inline()  # so it reaches the large steps too
    names = args.only.split(",") if args.only else list(QUICK if args.quick else BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {list(BENCHMARKS)}")
    rounds, per_round = (3, 2) if args.quick else (args.rounds, args.steps_per_round)
    # Before JAX starts: zoo's recurrent steps run on one CPU device per core, as in training.
    data_parallel.use_cpu_cores(BENCHMARKS[n] for n in names)
    peers = available_peers()
    about = machine()
    results = {
        "machine": f"{about['cpu']}, {about['cores']} cores, {about['device']}",
        "jax": jax.__version__,
        "torch": peers.get("pytorch"),
        "keras": peers.get("keras"),
        "about": about,
        "date": datetime.date.today().isoformat(),
        "dtype": args.dtype,
        "freed_memory_reused": reused,
        "steps_inline": inline,
        "peak_gflops": peak_matmul_gflops(jnp.dtype(args.dtype)),
        "rounds": rounds,
        "steps_per_round": per_round,
        "benchmarks": {},
    }
    os.makedirs(args.out, exist_ok=True)
    for name in names:
        bench = run_benchmark(name, BENCHMARKS[name], peers, args.dtype, rounds, per_round)
        results["benchmarks"][name] = bench
        print(verdict(name, bench), flush=True)
        write(results, args.out)  # after each benchmark: a stopped run keeps what it measured
    print(table(results))
    if plot(results, os.path.join(args.out, "results.png")):
        print(f"wrote {args.out}/results.json, results.md, results.png")


def write(results: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table(results) + "\n")


if __name__ == "__main__":
    main()
