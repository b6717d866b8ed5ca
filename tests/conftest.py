"""Strict JAX for every test: implicit rank promotion is an error (it hides transposed axes)."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
