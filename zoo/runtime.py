"""What makes XLA:CPU steps faster: `jit` (compile options for zoo's steps),
`reuse_freed_memory` (a process-wide allocator setting, opt-in as it touches the whole process),
`run_steps_inline` (single-device steps on the calling thread, so that setting reaches them) and
`use_cpu_cores` (CPU devices to run data-parallel steps on, one per core).

XLA:CPU allocates each compiled step's temporary buffer with `malloc` on every call (61 MiB for
the seed CNN's train step at batch 128). glibc serves a block that large with a fresh `mmap` and
unmaps it when it is freed, so every step faults in and zeroes all of its pages again: measured
on a 2-core CPU, that doubled the CNN train step (34 -> 16 ms without it). PyTorch's CPU steps
pay the same toll for their large tensors (23 -> 13 ms), which is why its CPU tuning guides
suggest jemalloc or tcmalloc. `reuse_freed_memory` gets the same effect from glibc itself.
"""

import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # bytes of free heap kept mapped before glibc returns them to the OS


def reuse_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse instead of unmapping it, for this whole process.

    Sets `M_MMAP_MAX` to 0 (large blocks come from the heap, not from their own `mmap`) and
    `M_TRIM_THRESHOLD` to 1 GiB (up to that much freed heap stays mapped). The cost is a resident
    size that does not shrink back after a peak. Call it once, before the first step and before
    other threads start allocating; `train.py` and the benchmarks do.

    That covers blocks allocated on the main thread. A step that XLA:CPU runs on one of its worker
    threads allocates from that thread's arena, which cannot hold a block over 64 MiB and maps it
    anyway (the CNN train step at batch 512 still faulted 174 MB per step): `run_steps_inline`
    keeps those steps on the calling thread.

    Returns whether every setting took: False where the C library has no `mallopt` (macOS,
    musl), which changes nothing.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])


_ASYNC_DISPATCH_VARIABLE = "JAX_CPU_ENABLE_ASYNC_DISPATCH"  # JAX reads its flag from here too


def run_steps_inline() -> bool:
    """Makes XLA:CPU run each single-device computation on the thread that calls it instead of
    queueing it for a worker thread (JAX's `jax_cpu_enable_async_dispatch=False`).

    Why: with `reuse_freed_memory`, a step's temporary buffer is reused from call to call only
    when the main thread's heap allocates it; XLA:CPU hands steps it deems expensive to a worker
    thread, whose arena maps every block over 64 MiB afresh, so those steps fault their buffers
    in again on every call. Inline, they run (and allocate) on the caller's thread. Train steps
    on a 2-core CPU, medians of interleaved rounds, with freed memory reused in both: the CNN at
    batch 512 95 -> 72 ms, ResNet-18 at 32x32 and batch 128 2440 -> 2146 ms, MobileNetV2 242 ->
    162 ms; without `reuse_freed_memory` inline dispatch alone gained nothing (96 -> 92 ms).
    The cost: the caller waits for each such step instead of queueing the next (`train.py`'s
    presets trained at the same speed with identical losses). Steps split over several devices
    are dispatched as before: JAX's setting leaves parallel computations alone.

    Call it before JAX starts, as `use_cpu_cores`. It leaves the setting alone, returning False,
    where the backends have started or the user chose it (`JAX_CPU_ENABLE_ASYNC_DISPATCH` in the
    environment); True where it took.
    """
    if _ASYNC_DISPATCH_VARIABLE in os.environ or _backends_started():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def _backends_started() -> bool:
    from jax._src import xla_bridge  # no public way to ask; a JAX without it counts as not started

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a scheduler sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_device_count_set() -> bool:
    """Whether the user chose how many CPU devices JAX makes: `JAX_NUM_CPU_DEVICES`
    (`jax_num_cpu_devices`) or `--xla_force_host_platform_device_count` in `XLA_FLAGS`."""
    flags = os.environ.get("XLA_FLAGS", "")
    return jax.config.jax_num_cpu_devices > 0 or "xla_force_host_platform_device_count" in flags


def use_cpu_cores(count: int | None = None, override: bool = False) -> int | None:
    """Makes JAX's CPU backend `count` devices (default: one per core), so that a data-parallel
    step (`zoo.training.parallel`) runs one shard of the batch on each core.

    Why: XLA:CPU runs each operation of a step on one core unless the operation is large enough
    to split, and a recurrent layer's per-timestep matmuls are not. The seed LSTM's train step
    (batch 64) took 24.1 ms on one device and 17.2 ms on two (one per core of a 2-core CPU);
    convolutions already use every core, and the seed CNN's step took 4% longer on two.

    Run steps over several CPU devices at most a few ahead of the one that is running (as
    `zoo.training.parallel.InFlight` does): XLA:CPU queues up to 32 launches per device, and
    with a longer queue a device's share of an all-reduce could wait for a launch slot for good
    (the tagger's `train.py` run on two devices hung in 4 of 4 tries before zoo's loop bounded
    it, and in none of 10 after).

    Call it right after `import jax`, before any JAX operation: JAX fixes the CPU device count
    when its backends start. It leaves the count alone, returning None, where the backends have
    started or (unless `override`) the user chose it (`cpu_device_count_set`); it returns `count`
    otherwise. On a GPU or TPU machine the accelerators stay the default devices; only the CPU
    backend changes.
    """
    count = cpu_cores() if count is None else count
    if count < 1:
        raise ValueError(f"the CPU device count must be at least 1, got {count}")
    if cpu_device_count_set() and not override:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends have started: the count is fixed
        return None
    return count


# YNNPACK, XLA:CPU's library for dots, reductions and 2-D convolutions, ran the seed CNN's
# convolutions 2-3x slower than XLA's Eigen convolutions (batch 128, 3x3, 32 -> 64 channels:
# forward 3.6 vs 1.5 ms, kernel gradient 6.0 vs 2.2 ms), so its convolutions are switched off
# (its dots and reductions stay). 512-bit vectors in XLA's own loops: recurrent train steps 5%
# faster on an AVX-512 CPU; LLVM keeps narrower vectors where the CPU has no wider ones.
XLA_CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    ),
    "xla_cpu_prefer_vector_width": 512,
}

_tracing_with_cpu_options = contextvars.ContextVar("zoo_tracing_with_cpu_options", default=False)
_hand_written_gradients = contextvars.ContextVar("zoo_hand_written_gradients", default=False)


def tracing_with_cpu_options() -> bool:
    """Whether the function being traced is compiled by `jit` with `XLA_CPU_OPTIONS`: layers
    pick the lowering that is fastest under them (`zoo.layers.conv`)."""
    return _tracing_with_cpu_options.get()


@contextlib.contextmanager
def hand_written_gradients() -> Iterator[None]:
    """Lets zoo's layers traced inside the block take their hand-written reverse-mode gradients
    on CPU (`jax.custom_vjp`s: the conv kernel gradient as a patch matmul, max pooling's
    gradient, the LSTM/GRU backward scan), which the train steps of `zoo.training` ask for.

    Forward-mode autodiff (`jvp`, `jacfwd`, `hessian`) cannot pass through a `custom_vjp`, so
    outside this block every layer is plain JAX and every transformation applies; inside it only
    reverse mode (`grad`, `vjp`) does. Only tracing reads it: wrap the `jax.grad` call inside the
    function you jit, as `zoo.training.steps.train_step_fn` does.
    """
    token = _hand_written_gradients.set(True)
    try:
        yield
    finally:
        _hand_written_gradients.reset(token)


def using_hand_written_gradients() -> bool:
    """Whether a layer traced now may take its hand-written CPU gradient: inside
    `hand_written_gradients()` on a CPU backend."""
    return _hand_written_gradients.get() and jax.default_backend() == "cpu"


@functools.cache
def _cpu_options_supported() -> bool:
    """Whether this jaxlib's XLA:CPU knows every option (their names change between versions)."""
    try:
        jax.jit(lambda a: a + 1, compiler_options=XLA_CPU_OPTIONS).lower(1.0).compile()
    except Exception as error:  # noqa: BLE001 - XLA reports an unknown option as a runtime error
        warnings.warn(f"zoo.runtime.jit compiles without XLA_CPU_OPTIONS: {error}", stacklevel=3)
        return False
    return True


class _Jitted:
    """What `jit` returns: called, traced or lowered, it defers to the `jax.jit` of `fun` that
    fits the arguments (see `jit`); it has `trace` and `lower`, so `jax.export.export` takes it."""

    def __init__(self, fun: Callable, jit_kwargs: dict[str, Any]):
        functools.update_wrapper(self, fun)
        self._fun = fun
        self._own_options = jit_kwargs.pop("compiler_options", None) or {}
        self._jit_kwargs = jit_kwargs
        self._jitted = functools.cache(self._make)

    def _make(self, backend: str, nested: bool) -> Callable:
        fun, jit_kwargs, own = self._fun, self._jit_kwargs, self._own_options
        if nested:
            return jax.jit(fun, **jit_kwargs)
        if backend == "cpu" and _cpu_options_supported():

            @functools.wraps(fun)
            def traced(*args, **kwargs):
                token = _tracing_with_cpu_options.set(True)
                try:
                    return fun(*args, **kwargs)
                finally:
                    _tracing_with_cpu_options.reset(token)

            return jax.jit(traced, compiler_options={**XLA_CPU_OPTIONS, **own}, **jit_kwargs)
        return jax.jit(fun, compiler_options=own or None, **jit_kwargs)

    def _pick(self, args, kwargs) -> Callable:
        leaves = jax.tree.leaves((args, kwargs))
        nested = any(isinstance(a, jax.core.Tracer) for a in leaves)
        return self._jitted(jax.default_backend(), nested)

    def __call__(self, *args, **kwargs):
        return self._pick(args, kwargs)(*args, **kwargs)

    def trace(self, *args, **kwargs):
        return self._pick(args, kwargs).trace(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        return self._pick(args, kwargs).eval_shape(*args, **kwargs)


def jit(fun: Callable, **jit_kwargs: Any) -> Callable:
    """`jax.jit(fun, **jit_kwargs)` that on a CPU backend compiles with `XLA_CPU_OPTIONS` and
    traces `fun` with `tracing_with_cpu_options()` true. zoo's train and eval steps use it; use
    it (rather than `jax.jit`) for your own steps over zoo models on CPU.

    The backend is looked up at the first call, not here, so importing a module that builds
    steps does not start JAX (`jax.distributed.initialize` must come first). Called on tracers
    (inside another `jax.jit`, `grad` or `vmap`) it is a plain `jax.jit`, as JAX takes compile
    options only at the top level: the outer function's options apply. What it returns has
    `trace` and `lower` like `jax.jit`'s result, so `jax.export.export` takes it.
    """
    return _Jitted(fun, dict(jit_kwargs))
