"""Strict JAX for every test: implicit rank promotion is an error (it hides transposed axes).

One persistent compilation cache serves the whole session, subprocesses included (they inherit
the environment): many tests start `train.py` on the same model, and a cached executable halves
such a run. The cache is fresh per session, so it never outlives the code that filled it.

Tests marked `slow` run first, so that with one xdist worker per core the longest ones start
early instead of leaving one worker busy at the end.

Under CI (`CI` set, as `.ci/run` runs) a test skipped for a missing package fails instead: the
test command installs every peer (PyTorch's CPU build, Keras), so a parity test that would skip
means an install step is missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile


def _xla_knows(flags: str) -> bool:
    """Whether this jaxlib's XLA starts with `flags` (it aborts on a flag it does not know)."""
    probe = [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"]
    environ = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(probe, env=environ, capture_output=True).returncode == 0


_CACHE = tempfile.mkdtemp(prefix="zoo-test-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Each program's LLVM code in one piece, not split for compiling on threads that the two
# workers already keep busy: the suite compiles thousands of small programs (tests/models/
# test_registry.py 96 -> 88 s on 2 cores, 2026-12-04). The math is the same; XLA's presets and
# emitter choices that compiled faster changed results (NOTES.md). A count set by the user stays.
_ONE_PIECE = "--xla_cpu_parallel_codegen_split_count"
_flags = os.environ.get("XLA_FLAGS", "")
if _ONE_PIECE not in _flags and _xla_knows(f"{_flags} {_ONE_PIECE}=1"):
    os.environ["XLA_FLAGS"] = f"{_flags} {_ONE_PIECE}=1".strip()
os.environ.setdefault("KERAS_BACKEND", "jax")
# Keras' default is TensorFlow, not installed

import jax  # noqa: E402 - after the cache settings, which JAX reads when it starts
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: else as found


def _optimize(optimized: bool) -> None:
    jax.config.update("jax_disable_most_optimizations", not optimized)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if optimized else "1"  # subprocesses


_optimize(False)  # before any fixture runs, module-scoped ones included


@pytest.fixture(autouse=True)
def _compile_for_the_test(request):
    """Tests compile far more than they run: XLA without most of its optimizations compiles
    the registry's shape and gradient tests in 330 s of CPU instead of 858 s, and a one-epoch
    `train.py` run in 10.6 s instead of 16.0 s (2026-12-01), but runs its steps half as fast.
    Tests marked `optimized` (those that judge what training reaches, and long runs) keep
    optimized code, in process and in the subprocesses they start: unoptimized, the charlm
    acceptance test took 570 s. The math is the same; speed is measured in benchmarks/.
    """
    optimized = request.node.get_closest_marker("optimized") is not None
    _optimize(optimized)
    yield
    if optimized:
        _optimize(False)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


def _fail_if_a_package_is_missing(report):
    if os.environ.get("CI") and report.skipped and "could not import" in str(report.longrepr):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{reason}: the test command installs it, so under CI this fails"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _fail_if_a_package_is_missing((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _fail_if_a_package_is_missing((yield))
