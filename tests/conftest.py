"""Strict JAX for every test: implicit rank promotion is an error (it hides transposed axes).

One persistent compilation cache serves the whole session, subprocesses included (they inherit
the environment): many tests start `train.py` on the same model, and a cached executable halves
such a run. The cache is fresh per session, so it never outlives the code that filled it.
"""

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="zoo-test-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402 - after the cache settings, which JAX reads when it starts
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
