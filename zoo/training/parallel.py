"""Data parallel training over every device of every process.

Three layouts of the same computation, picked by `--parallel`:

- `sharding` (default): `zoo.runtime.jit` of a `jax.shard_map` over a one-axis `Mesh` of all
  devices; batches are global arrays split along the `data` axis, the train state is replicated,
  and each device runs the step on its rows, averaging gradients, loss and batch-norm statistics
  with `lax.pmean` over `data`. (Left to XLA's partitioner, a plain `jit` over the same shardings
  ran the recurrent models' scans whole on every device: the seed LSTM's step on 2 CPU devices
  took 25.0 ms against 23.3 on one; under `shard_map`, 17.2 against 24.1.)
- `pmap`: `jax.pmap` over the local devices; the state has a leading device axis, the same
  per-device step.
- `none`: one device, `zoo.runtime.jit`.

All three run the same global batch and end with the same parameters up to float summation
order (batch norm uses global batch statistics: the model's `batch_norm_axis`). In a
multi-process run (`jax.distributed`) process `p` of `P` reads only rows `[p*B/P, (p+1)*B/P)`
of each global batch of `B` rows, and the devices of all processes form the mesh.
"""

import collections
import functools
import itertools
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zoo import models, runtime
from zoo.data.batching import Batch
from zoo.training.config import ConfigError
from zoo.training.steps import eval_step, eval_step_fn, train_step, train_step_fn

PARALLEL = ("sharding", "pmap", "none")
DATA_AXIS = "data"
PREFETCH = 2  # batches put on devices ahead of the step that uses them
IN_FLIGHT = 2  # steps dispatched and not yet finished, at most


class DataParallel:
    """How the train state and batches are laid out on devices, and the steps that run there.

    `put` lays out a host tree (params, the train state) the way the steps expect it, `fetch`
    brings one copy back as NumPy, `put_batch` turns this process's rows of a global batch into
    the step's input.
    """

    name = "none"

    def __init__(self, devices: list[jax.Device]):
        self.devices = devices
        self._train_step, self._eval_step = train_step, eval_step  # jitted for one device

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def shard(self) -> tuple[int, int]:
        """`(process index, process count)`: which rows of each global batch this process reads."""
        return jax.process_index(), jax.process_count()

    def check_batch_size(self, batch_size: int) -> None:
        """A clear error when `batch_size` does not split evenly over the devices."""
        n = self.num_devices
        if batch_size % n:
            lower, upper = batch_size // n * n, (batch_size // n + 1) * n
            such_as = f"{lower} or {upper}" if lower else str(upper)
            raise ConfigError(
                f"batch_size {batch_size} does not split evenly over {n} devices (--parallel "
                f"{self.name}): use a multiple of {n}, such as {such_as}, or fewer devices"
            )

    def prepare_model(self, model: Any) -> Any:
        return model

    def put(self, tree: Any) -> Any:
        return jax.device_put(tree, self.devices[0])

    def fetch(self, tree: Any) -> Any:
        return fetch_replicated(tree)

    def put_batch(self, batch: Batch) -> Batch:
        return jax.device_put(batch, self.devices[0])

    def train_step(self, state: Any, batch: Batch) -> tuple[Any, dict[str, jax.Array]]:
        return self._train_step(state, batch)

    def eval_step(self, state: Any, batch: Batch) -> tuple[jax.Array | None, dict[str, jax.Array]]:
        return self._eval_step(state, batch)


class Sharded(DataParallel):
    """`jax.shard_map` over a `Mesh` of all devices, jitted: batches split along `data`, the
    state replicated, the per-device step of `pmap` (`axis_name`)."""

    name = "sharding"

    def __init__(self, devices: list[jax.Device]):
        super().__init__(devices)
        mesh = Mesh(np.asarray(devices), (DATA_AXIS,))
        self.replicated = NamedSharding(mesh, P())
        self.data = NamedSharding(mesh, P(DATA_AXIS))

        def per_device(step: Callable) -> Callable:
            # check_vma=False: the recurrent layers' zero initial carries are not marked as
            # varying over `data`, as a scan under shard_map's check would have them.
            return jax.shard_map(
                functools.partial(step, axis_name=DATA_AXIS),
                mesh=mesh,
                in_specs=(P(), P(DATA_AXIS)),
                out_specs=(P(), P()),
                check_vma=False,
            )

        self._train_step = runtime.jit(per_device(train_step_fn), donate_argnums=0)
        self._eval_step = runtime.jit(per_device(eval_step_fn))

    def prepare_model(self, model: Any) -> Any:
        return _global_batch_norm(model)

    def put(self, tree: Any) -> Any:
        def replicate(leaf: Any) -> jax.Array:
            if jax.dtypes.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
                data = replicate(jax.random.key_data(leaf))
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
            # Built from host values: device_put cannot target other processes' devices.
            value = np.asarray(jax.device_get(leaf))
            return jax.make_array_from_callback(value.shape, self.replicated, value.__getitem__)

        return jax.tree.map(replicate, tree)

    def put_batch(self, batch: Batch) -> Batch:
        return jax.tree.map(
            lambda rows: jax.make_array_from_process_local_data(self.data, rows), batch
        )


class Pmapped(DataParallel):
    """`jax.pmap` over the local devices: one copy of the state per device (a leading device
    axis), one slice of the batch per device, `pmean`/`psum` over `data` inside the step."""

    name = "pmap"

    def __init__(self, devices: list[jax.Device]):
        super().__init__(devices)
        self.local_devices = [d for d in devices if d.process_index == jax.process_index()]
        mesh = Mesh(np.asarray(self.local_devices), (DATA_AXIS,))
        self.stacked = NamedSharding(mesh, P(DATA_AXIS))
        # pmap takes a subset of devices in one process; across processes, all of them.
        pmap_devices = self.local_devices if jax.process_count() == 1 else None
        self._train_step = jax.pmap(
            functools.partial(train_step_fn, axis_name=DATA_AXIS),
            axis_name=DATA_AXIS,
            devices=pmap_devices,
            donate_argnums=0,
            out_axes=(0, None),  # the metric sums are psum-ed: one copy
        )
        self._eval_step = jax.pmap(
            functools.partial(eval_step_fn, axis_name=DATA_AXIS),
            axis_name=DATA_AXIS,
            devices=pmap_devices,
            out_axes=None,
        )

    def prepare_model(self, model: Any) -> Any:
        return _global_batch_norm(model)

    def put(self, tree: Any) -> Any:
        n = len(self.local_devices)

        def stack(leaf):
            return jax.device_put(jnp.broadcast_to(leaf, (n, *jnp.shape(leaf))), self.stacked)

        return jax.tree.map(stack, tree)

    def fetch(self, tree: Any) -> Any:
        return jax.tree.map(lambda leaf: jax.device_get(_first_shard(leaf)[0]), tree)

    def put_batch(self, batch: Batch) -> Batch:
        n = len(self.local_devices)
        return jax.tree.map(
            lambda rows: jax.device_put(rows.reshape(n, -1, *rows.shape[1:]), self.stacked),
            batch,
        )


def _global_batch_norm(model: Any) -> Any:
    """`model` taking batch-norm statistics over the global batch, not each device's rows."""
    if hasattr(model, "batch_norm_axis"):
        return model.clone(batch_norm_axis=DATA_AXIS)
    return model


def _first_shard(leaf: Any) -> Any:
    return leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf


def fetch_replicated(tree: Any) -> Any:
    """NumPy values of replicated arrays, such as the metrics and predictions every step returns:
    the first local shard is the whole value, also in multi-process runs where other processes'
    shards are not addressable."""
    return jax.tree.map(lambda leaf: jax.device_get(_first_shard(leaf)), tree)


SPLIT_WIDTH = 256  # the widest recurrent layer `default_cpu_devices` splits over the cores


def default_cpu_devices(
    model: str, batch_size: int, processes: int = 1, model_options: dict | None = None
) -> int:
    """How many CPU devices `train.py` makes for `model` (with `model_options`) unless told
    (`zoo.runtime.use_cpu_cores`), from train steps measured on 2 cores:

    - one per core for recurrent models (`zoo.models.recurrent`) no wider than `SPLIT_WIDTH`,
      whose per-step matmuls each run on one core: 2 x LSTM(128) over 28 steps at batch 64
      trained in 24.1 ms on one device and 17.2 on two, the GRU in 20.6 and 17.0, 2 x LSTM(256)
      in 57 and 47;
    - one for wider recurrent layers, whose matmuls use every core already: there one device
      gains from running inline (`zoo.runtime.run_steps_inline`), while each device's share of
      a split step allocates on a worker thread and faults its buffers in again every step
      (2 x LSTM(512) over 100 steps: 599 ms on one device, 680 on two; 2 x GRU(512) 517, 547);
    - one for the rest, whose convolutions use every core already (the seed CNN: 18.8 -> 19.6
      ms, MobileNetV2: 246 -> 306 ms; docs/devices.md has whole runs).

    Lowered to the largest count that splits each of `processes`' share of `batch_size` evenly,
    so any batch size still runs."""
    if not models.recurrent(model) or models.recurrent_width(model, model_options) > SPLIT_WIDTH:
        return 1
    rows = batch_size // processes if batch_size % processes == 0 else 1
    return max(n for n in range(1, runtime.cpu_cores() + 1) if rows % n == 0)


def create(name: str, devices: list[jax.Device] | None = None) -> DataParallel:
    """The layout `name` ('sharding', 'pmap' or 'none') over `devices` (default: every device of
    every process; 'none' takes the first local one)."""
    if name not in PARALLEL:
        raise ConfigError(f"parallel must be one of {', '.join(PARALLEL)}, got {name!r}")
    if name == "none":
        if jax.process_count() > 1:
            raise ConfigError(
                f"--parallel none trains on one device, but this is process "
                f"{jax.process_index()} of {jax.process_count()}: use sharding or pmap"
            )
        return DataParallel([jax.local_devices()[0]] if devices is None else devices[:1])
    devices = jax.devices() if devices is None else list(devices)
    return Sharded(devices) if name == "sharding" else Pmapped(devices)


def prefetch(
    batches: Iterable[Batch], put: Callable[[Batch], Batch], size: int = PREFETCH
) -> Iterator[Batch]:
    """`put(batch)` for every batch, with up to `size` placed batches queued: while the consumer
    runs the step of one, the next is already on its devices, and the one after is placed as soon
    as the consumer has dispatched its step (JAX dispatches both asynchronously)."""
    batches = iter(batches)
    queue = collections.deque(put(batch) for batch in itertools.islice(batches, size))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(batches, 1):
            queue.append(put(batch))


class InFlight:
    """Bounds how far the host runs ahead of the devices: `add` a step's outputs, and once more
    than `depth` steps are queued it waits for the oldest. Two keep the devices busy. Unbounded,
    XLA:CPU's launch queue of several CPU devices (32 per device) could fill with steps waiting
    on each other, and an all-reduce waited for a device that had no launch slot left: the
    tagger's run on 2 CPU devices hung in 4 of 4 tries; bounded, it ran 10 of 10."""

    def __init__(self, depth: int = IN_FLIGHT):
        self.depth = depth
        self.queue: collections.deque = collections.deque()

    def add(self, outputs: Any) -> None:
        self.queue.append(outputs)
        if len(self.queue) > self.depth:
            jax.block_until_ready(self.queue.popleft())


def initialize_distributed(
    coordinator: str, num_processes: int, process_id: int, timeout: float = 120.0
) -> None:
    """Joins a multi-process run with `jax.distributed.initialize`, or exits with a clear message.

    Every process calls this first, with the same `coordinator` ('HOST:PORT', where process 0
    serves) and `num_processes` and its own `process_id`. JAX waits for all of them, and when
    some never come it aborts deep in C++; a watchdog thread instead prints which of the
    coordinator or the other processes is missing, and exits with status 1, after `timeout`
    seconds.
    """
    host, port = _parse_address(coordinator)
    if num_processes < 1:
        raise ConfigError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"process_id {process_id} is out of range for num_processes {num_processes}: "
            f"use 0..{num_processes - 1}, one distinct id per process"
        )
    if timeout <= 0:
        raise ConfigError(f"the initialization timeout must be positive, got {timeout}")

    def give_up() -> None:
        if process_id == 0 or _reachable(host, port):
            missing = (
                f"the coordinator at {coordinator} is up, but not all {num_processes} processes "
                f"joined it"
            )
        else:
            missing = f"could not reach the coordinator at {coordinator} (process 0 serves it)"
        sys.stderr.write(
            f"zoo: process {process_id}: {missing} within {timeout:g} s; start every process "
            f"with the same --coordinator and --num-processes and its own --process-id\n"
        )
        sys.stderr.flush()
        os._exit(1)  # the main thread is blocked inside jax.distributed.initialize

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(timeout) + 30,  # the watchdog speaks first
        )
    finally:
        watchdog.cancel()


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator must be HOST:PORT, such as localhost:1234; got {address!r}")
    return host.strip("[]"), int(port)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False
