"""Which weights are regularized, and the L1/L2 penalty added to the loss.

By default only kernels (dense, convolution and recurrent) are penalized and decayed: biases, norm
scales and embeddings are left alone, as in Keras' `kernel_regularizer` and the AdamW paper.
"""

from typing import Any

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays

KERNELS = ("kernel", "recurrent_kernel")


def regularized(params: Params, regularize: str = "kernels") -> Params:
    """A pytree of bools like `params`: True where a leaf is regularized ('kernels' or 'all')."""
    if regularize == "all":
        return jax.tree.map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) in KERNELS, params)


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def penalty(params: Params, l1: float, l2: float, regularize: str = "kernels") -> jax.Array:
    """`l1 * sum|w| + l2 * sum(w**2)` over the regularized leaves (Keras' convention, so the
    gradient adds `l1 * sign(w) + 2 * l2 * w`)."""
    total = jnp.zeros((), jnp.float32)
    if not (l1 or l2):
        return total
    mask = regularized(params, regularize)
    for leaf, on in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        if on:
            total += l1 * jnp.sum(jnp.abs(leaf)) + l2 * jnp.sum(jnp.square(leaf))
    return total
