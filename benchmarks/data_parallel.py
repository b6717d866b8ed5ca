"""zoo's row of a benchmark on the CPU devices zoo's training would give it: `train.py` splits a
recurrent model's batch over one CPU device per core where its layers are up to 256 units wide
(`zoo.training.parallel.default_cpu_devices`, `zoo.runtime.use_cpu_cores`), so the benchmarks
time zoo's train step that way too.

`use_cpu_cores` runs before JAX starts (each script's `main`); `zoo_devices` says how many
devices a benchmark's zoo step takes; `SplitBatch` runs a gradient function on each device's
rows and averages the results over the devices, as zoo's `sharding` layout does.
"""

from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zoo import runtime
from zoo.training.parallel import DATA_AXIS, default_cpu_devices


def use_cpu_cores(benchmarks: Iterable) -> int | None:
    """One CPU device per core where one of the benchmarks' zoo steps splits its batch (call
    before JAX starts); the count set, or None. Benchmarks are compare.py's (`kind`, `batch`,
    `hidden`)."""
    if max(map(_default_devices, benchmarks), default=1) > 1:
        return runtime.use_cpu_cores()
    return None


def zoo_devices(bench) -> int:
    """How many CPU devices zoo's train step of compare.py's benchmark `bench` runs on; 1 off
    CPU."""
    if jax.default_backend() != "cpu":
        return 1
    return min(_default_devices(bench), jax.local_device_count())


def _default_devices(bench) -> int:
    """`default_cpu_devices` of the benchmark's model, its recurrent layers `bench.hidden` wide
    (0: the model's default width)."""
    options = {"hidden_sizes": (bench.hidden,)} if bench.hidden else None
    return default_cpu_devices(bench.kind, bench.batch, model_options=options)


class SplitBatch:
    """Runs functions of `(*replicated, *batch)` over `devices` CPU devices: the first
    `replicated` arguments (params, state) whole on each device, the batch split along its
    first axis."""

    def __init__(self, devices: int, replicated: int):
        self.mesh = Mesh(np.asarray(jax.devices()[:devices]), (DATA_AXIS,))
        self.replicated = replicated

    def whole(self, tree):
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def split(self, tree):
        return jax.device_put(tree, NamedSharding(self.mesh, P(DATA_AXIS)))

    def _map(self, fn: Callable, num_args: int, out_specs) -> Callable:
        specs = (P(),) * self.replicated + (P(DATA_AXIS),) * (num_args - self.replicated)
        # check_vma=False: the recurrent layers' zero initial carries are not marked as varying.
        return jax.shard_map(
            fn, mesh=self.mesh, in_specs=specs, out_specs=out_specs, check_vma=False
        )

    def mean(self, fn: Callable, num_args: int) -> Callable:
        """`fn` on each device's rows, its outputs averaged over the devices (gradients)."""
        return self._map(lambda *a: jax.lax.pmean(fn(*a), DATA_AXIS), num_args, P())

    def rows(self, fn: Callable, num_args: int) -> Callable:
        """`fn` on each device's rows, its outputs' rows put back together (inference)."""
        return self._map(fn, num_args, P(DATA_AXIS))
