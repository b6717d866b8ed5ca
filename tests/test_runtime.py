"""zoo.runtime: freed memory is reused instead of being faulted in again on every allocation, by
steps on a worker thread too once they run inline; CPU devices as cores; zoo's jit."""

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, writes and frees 80 MiB five times through malloc itself, as XLA:CPU does with a
# step's temporary buffer, on the main thread or another one, and prints the minor page faults
# that cost.
ALLOCATE = """
import ctypes, ctypes.util, resource, sys, threading
from zoo.runtime import reuse_freed_memory
if sys.argv[1] != "plain":
    assert reuse_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 80 << 20

def rounds():
    for _ in range(5):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)

faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if sys.argv[2] == "thread":
    worker = threading.Thread(target=rounds)
    worker.start()
    worker.join()
else:
    rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def page_faults(mode: str, thread: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATE, mode, thread],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
@pytest.mark.parametrize(
    "mode, thread, reused",
    [
        ("reuse", "main", True),
        ("reuse", "thread", False),  # a thread's arena maps blocks over 64 MiB whatever we set
    ],
)
def test_reuse_freed_memory_stops_repeated_page_faults(mode, thread, reused):
    pages = (80 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert page_faults("plain", thread) >= 4 * pages  # each round maps and faults the block in
    faults = page_faults(mode, thread)
    if reused:
        assert faults <= 1.5 * pages  # only the first round faults its pages in
    else:
        assert faults >= 4 * pages


# Runs a compiled step with an 80 MiB intermediate twenty times, after `run_steps_inline` when
# asked, and prints the minor page faults that cost. The loop makes it a step XLA:CPU hands to a
# worker thread unless dispatch is inline.
STEP = """
import resource, sys
from zoo import runtime
assert runtime.reuse_freed_memory()
print(runtime.run_steps_inline() if sys.argv[1] == "inline" else None)
import jax, jax.numpy as jnp
step = jax.jit(lambda a, b: jax.lax.fori_loop(0, 2, lambda i, a: a + jnp.tanh(a @ b) @ b.T, a))
a, b = jnp.ones((4096, 64)), jnp.ones((64, 5120))
step(a, b).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step(a, b).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
print(jax.config.read("jax_cpu_enable_async_dispatch"), runtime.run_steps_inline())
"""


def run_step(mode: str, **env: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", STEP, mode],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_steps_run_inline_reuse_their_freed_buffers():
    pages = (80 << 20) // os.sysconf("SC_PAGE_SIZE")
    took, faults, asynchronous, again = run_step("inline")
    assert took == "True" and asynchronous == "False"
    assert again == "False"  # the backends have started: too late to change
    # Not faulted in again on every call (queued for a worker thread: about `pages` a call, 20.8
    # x `pages` in 20 calls). The heap still grows now and then, more on a loaded machine (4.2 x
    # `pages` in 20 calls in one CI run, 2.1 in 5 calls in another), hence 8 for 20 calls.
    assert int(faults) <= 8 * pages


def test_run_steps_inline_leaves_the_users_choice():
    took, _, asynchronous, _ = run_step("inline", JAX_CPU_ENABLE_ASYNC_DISPATCH="true")
    assert took == "False" and asynchronous == "True"


def test_reuse_freed_memory_says_whether_it_applied():
    from zoo.runtime import reuse_freed_memory

    has_mallopt = hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt")
    assert reuse_freed_memory() is has_mallopt


def _ynnpack_calls(hlo: str) -> int:
    """How many ops of a compiled CPU module XLA hands to YNNPACK."""
    return hlo.count('"kind":"__ynn_fusion"')


def test_jit_compiles_with_the_cpu_options_and_says_so_while_tracing():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from zoo import runtime

    if jax.default_backend() != "cpu":
        pytest.skip("the options are XLA:CPU's")
    seen = []

    def conv(x, kernel):
        seen.append(runtime.tracing_with_cpu_options())
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, kernel = jnp.ones((4, 9, 9, 32)), jnp.ones((3, 3, 32, 64))
    tuned = runtime.jit(conv)
    # The options reach the compiler: XLA's convolution, where jax.jit hands it to YNNPACK.
    assert _ynnpack_calls(tuned.lower(x, kernel).compile().as_text()) == 0
    assert _ynnpack_calls(jax.jit(conv).lower(x, kernel).compile().as_text()) == 1
    np.testing.assert_allclose(tuned(x, kernel), jax.jit(conv)(x, kernel), rtol=1e-6)
    assert seen == [True, False]  # traced once by each: by runtime.jit, then by jax.jit
    assert not runtime.tracing_with_cpu_options()


def test_jit_without_the_options_where_xla_does_not_know_them(monkeypatch):
    import jax
    import jax.numpy as jnp

    from zoo import runtime

    monkeypatch.setattr(runtime, "XLA_CPU_OPTIONS", {"xla_cpu_no_such_option": True})
    uncached = runtime._cpu_options_supported.__wrapped__
    monkeypatch.setattr(runtime, "_cpu_options_supported", uncached)
    double = runtime.jit(lambda a: 2 * a, donate_argnums=0)
    with pytest.warns(UserWarning, match="xla_cpu_no_such_option"):
        assert float(double(jnp.float32(3))) == 6.0
    assert "xla_cpu_no_such_option" not in str(jax.jit(lambda a: a).lower(1.0).compile())


def test_importing_the_training_steps_does_not_start_jax():
    # jax.distributed.initialize must run before any backend starts: runtime.jit looks the
    # backend up at the first call, not when a module builds its steps.
    code = (
        "import zoo.training, zoo.training.parallel\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_jit_works_inside_other_transformations():
    # JAX takes compile options only at the top level: under jit, grad or vmap it is jax.jit.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from zoo import runtime

    f = runtime.jit(lambda a: jnp.sin(a) * a)
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    np.testing.assert_allclose(jax.jit(lambda a: f(a) + 1)(x), jnp.sin(x) * x + 1, rtol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda a: f(a).sum())(x), jnp.cos(x) * x + jnp.sin(x), rtol=1e-6
    )
    np.testing.assert_allclose(jax.vmap(f)(x), jnp.sin(x) * x, rtol=1e-6)


def test_what_jit_returns_is_exportable_with_a_symbolic_batch():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from zoo import models, runtime

    model = models.create("cnn")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    predict = runtime.jit(lambda x: jax.nn.softmax(model.apply(variables, x)))
    (batch,) = jax.export.symbolic_shape("b")
    exported = jax.export.export(predict)(jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32))
    loaded = jax.export.deserialize(exported.serialize())
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    np.testing.assert_allclose(loaded.call(x), predict(x), rtol=1e-5, atol=1e-7)


def test_zoos_train_step_takes_the_hand_written_gradients_and_nothing_else_does():
    """The fast paths are opt-in: inside `hand_written_gradients()` (zoo's train step) on CPU a
    model's layers are custom_vjps; outside it they are plain JAX."""
    import jax
    import jax.numpy as jnp

    from zoo import models, runtime

    if jax.default_backend() != "cpu":
        pytest.skip("the hand-written gradients are XLA:CPU's")
    model = models.create("cnn_lstm", input_shape=(2, 6, 6, 1), features=(4,), hidden_sizes=(3,))
    x = jnp.ones((2, 2, 6, 6, 1))
    params = model.init(jax.random.key(0), x)["params"]

    def forward(p):  # a new function each time: JAX reuses the trace of the same one
        return model.apply({"params": p}, x).sum()

    assert "custom_vjp" not in str(jax.make_jaxpr(forward)(params))
    with runtime.hand_written_gradients():
        traced = str(jax.make_jaxpr(lambda p: forward(p))(params))
    assert traced.count("custom_vjp_call") == 3  # conv, max_pool, the LSTM's scan
    assert not runtime.using_hand_written_gradients()


# Asks for CPU devices as a script would, right after `import jax`, and prints what it got.
CPU_DEVICES = """
import json, sys
import jax
from zoo import runtime
first = runtime.use_cpu_cores(int(sys.argv[1]), override=sys.argv[2] == "override")
jax.numpy.zeros(1).block_until_ready()  # the backends start
late = runtime.use_cpu_cores(1, override=True)
print(json.dumps([first, late, jax.device_count()]))
"""


def cpu_devices(count: int, override: bool = False, **env: str) -> list:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    out = subprocess.run(
        [sys.executable, "-c", CPU_DEVICES, str(count), "override" if override else "keep"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**environ, "JAX_PLATFORMS": "cpu", **env},
    )
    return json.loads(out.stdout)


def test_use_cpu_cores_makes_that_many_devices_before_jax_starts_and_none_after():
    assert cpu_devices(3) == [3, None, 3]


@pytest.mark.parametrize(
    "env",
    [
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=5"},
        {"JAX_NUM_CPU_DEVICES": "5"},
    ],
)
def test_use_cpu_cores_keeps_a_count_the_user_set(env):
    assert cpu_devices(3, **env) == [None, None, 5]
    assert cpu_devices(3, override=True, **env) == [3, None, 3]


def test_use_cpu_cores_refuses_a_count_below_one():
    from zoo import runtime

    with pytest.raises(ValueError, match="at least 1, got 0"):
        runtime.use_cpu_cores(0)


def test_cpu_cores_is_what_this_process_may_run_on():
    from zoo import runtime

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert runtime.cpu_cores() == expected
