"""Input checks shared by the models: clear errors at trace time, free under jit."""

import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp


def check_input(
    x: jax.Array, input_shape: Sequence[int | None], model: str, *, tokens: bool = False
) -> jax.Array:
    """Checks `x` is `(*batch, *input_shape)`; returns it as `(N, *input_shape)`.

    `None` in `input_shape` accepts any length on that axis (variable sequence length). Inputs
    must be floating point, or integer token ids when `tokens`.
    """
    x = jnp.asarray(x)
    expected = "(batch, " + ", ".join("steps" if d is None else str(d) for d in input_shape) + ")"
    kind, ok = ("integer token ids", jnp.integer) if tokens else ("floating-point", jnp.floating)
    if not jnp.issubdtype(x.dtype, ok):
        hint = "" if tokens else "; scale to floats first, e.g. x.astype(jnp.float32) / 255"
        raise ValueError(
            f"{model} expects {kind} input of shape {expected}, got dtype {x.dtype}{hint}"
        )
    chex.assert_shape(
        x,
        (..., *input_shape),
        custom_message=f"{model} expects input of shape {expected}",
        exception_type=ValueError,
    )
    return x.reshape(-1, *x.shape[x.ndim - len(input_shape) :])


def dtypes(module) -> dict[str, Any]:
    """A model's `dtype` (of the computation; None: promoted from inputs and params) and
    `param_dtype` (of the parameters), for each of its layers: Flax's convention."""
    return {"dtype": module.dtype, "param_dtype": module.param_dtype}


def batch_shape(x: jax.Array, input_shape: Sequence[int | None]) -> tuple[int, ...]:
    """The leading batch axes of `x`, `(*batch, *input_shape)`."""
    return tuple(jnp.shape(x)[: jnp.ndim(x) - len(input_shape)])


def flatten(x: jax.Array) -> jax.Array:
    """`(B, ...)` -> `(B, features)`. Unlike `x.reshape(B, -1)`, which cannot infer the size for
    an empty batch (JAX divides by B), this takes a batch of any size, 0 included."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))
