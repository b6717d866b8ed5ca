"""Pooling and residual blocks shared by the convolutional models.

Pooling works on channels-last arrays with any number of spatial axes, `(B, *spatial, C)`, so the
same function serves Conv1D `(B, T, C)` and Conv2D `(B, H, W, C)` stacks. Windows do not overlap
(stride == window, Keras' default) and a trailing remainder is dropped ('VALID' padding), so a
26-wide map pools to 13 and an 11-wide map to 5, as in Keras `MaxPooling2D(2)`.

Non-overlapping windows are pooled by a reshape and a reduction instead of `lax.reduce_window`:
the result is identical, and the backward pass of a plain reduction is much cheaper than the
select-and-scatter that `reduce_window`'s gradient lowers to.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: dict[str, Activation] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
}


def activation(name: str) -> Activation:
    """Looks up an activation function by name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _windows(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """Splits each spatial axis of `(B, *spatial, C)` into `(out, window)` pairs."""
    spatial = x.shape[1:-1]
    if len(window) != len(spatial):
        raise ValueError(f"pool window {tuple(window)} does not match spatial shape {spatial}")
    out = [size // w for size, w in zip(spatial, window, strict=True)]
    if min(out) < 1:
        raise ValueError(f"pool window {tuple(window)} is larger than the spatial shape {spatial}")
    crop = (slice(None),) + tuple(slice(0, o * w) for o, w in zip(out, window, strict=True))
    x = x[crop + (slice(None),)]
    split = [x.shape[0]]
    for o, w in zip(out, window, strict=True):
        split += [o, w]
    return x.reshape(*split, x.shape[-1])  # (B, o1, w1, o2, w2, ..., C)


def _window_axes(num_spatial: int) -> tuple[int, ...]:
    return tuple(2 + 2 * i for i in range(num_spatial))


def max_pool(x: jax.Array, window: int | Sequence[int] = 2) -> jax.Array:
    """Max pooling over non-overlapping windows.

    Args:
      x: `(B, *spatial, C)`.
      window: window (and stride) per spatial axis, or one int for all of them.

    Returns:
      `(B, *(s // w for s, w in zip(spatial, window)), C)`.
    """
    window = _as_tuple(window, x.ndim - 2)
    return jnp.max(_windows(x, window), axis=_window_axes(len(window)))


def avg_pool(x: jax.Array, window: int | Sequence[int] = 2) -> jax.Array:
    """Average pooling over non-overlapping windows; shapes as in `max_pool`."""
    window = _as_tuple(window, x.ndim - 2)
    return jnp.mean(_windows(x, window), axis=_window_axes(len(window)))


POOLS = {"max": max_pool, "avg": avg_pool}


def _as_tuple(window: int | Sequence[int], num_spatial: int) -> tuple[int, ...]:
    if isinstance(window, int):
        return (window,) * num_spatial
    return tuple(window)


class ResidualBlock(nn.Module):
    """Two 'SAME' convolutions with an identity (or 1x1 projection) shortcut.

    `y = act(norm(conv(act(norm(conv(x))))) + shortcut(x))`, the basic block of He et al. (2016).
    Works for any number of spatial axes; `x` is `(B, *spatial, C)`. `batch_norm_axis` names a
    `jax.pmap` axis to compute batch statistics over (all devices' shards), as for `nn.BatchNorm`.
    """

    features: int
    kernel_size: Sequence[int]
    activation: str = "relu"
    batch_norm: bool = False
    batch_norm_axis: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = activation(self.activation)
        shortcut = x
        y = x
        for i in range(2):
            y = nn.Conv(
                self.features, self.kernel_size, padding="SAME", use_bias=not self.batch_norm
            )(y)
            if self.batch_norm:
                y = nn.BatchNorm(use_running_average=not train, axis_name=self.batch_norm_axis)(y)
            if i == 0:
                y = act(y)
        if shortcut.shape[-1] != self.features:
            ones = (1,) * len(self.kernel_size)
            shortcut = nn.Conv(self.features, ones, use_bias=False, name="projection")(shortcut)
        return act(y + shortcut)
