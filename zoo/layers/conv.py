"""Convolution, pooling and residual blocks shared by the convolutional models.

Pooling works on channels-last arrays with any number of spatial axes, `(B, *spatial, C)`, so the
same function serves Conv1D `(B, T, C)` and Conv2D `(B, H, W, C)` stacks. Windows do not overlap
(stride == window, Keras' default) and a trailing remainder is dropped ('VALID' padding), so a
26-wide map pools to 13 and an 11-wide map to 5, as in Keras `MaxPooling2D(2)`.

Max pooling's value is `lax.reduce_window`'s, but its gradient is that of a reshape and a max
over the windows, much cheaper than the select-and-scatter that `reduce_window`'s own gradient
lowers to. Average pooling is a reshape and a mean.

`Conv` is `nn.Conv` for stride 1 with the same parameters. Its value is
`lax.conv_general_dilated` (cuDNN, the MXU, XLA:CPU's kernels). On CPU its gradient is written by
hand: XLA:CPU's kernel gradient (a convolution over the batch) is slow, so the forward pass keeps
the input's patches (each output position's window, flattened) and the kernel gradient is one
matmul of them with the output gradient; the input gradient stays XLA's own convolution.
"""

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

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


def _pooled_shape(x: jax.Array, window: Sequence[int]) -> list[int]:
    """The pooled spatial shape of `(B, *spatial, C)`, or a clear error."""
    spatial = x.shape[1:-1]
    if len(window) != len(spatial):
        raise ValueError(f"pool window {tuple(window)} does not match spatial shape {spatial}")
    out = [size // w for size, w in zip(spatial, window, strict=True)]
    if min(out) < 1:
        raise ValueError(f"pool window {tuple(window)} is larger than the spatial shape {spatial}")
    return out


def _windows(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """Splits each spatial axis of `(B, *spatial, C)` into `(out, window)` pairs."""
    out = _pooled_shape(x, window)
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

    The value is `lax.reduce_window`'s; when differentiated, the pool is a reshape and `jnp.max`,
    whose gradient (split equally between tied maxima, as everywhere in JAX) is far cheaper on
    CPU than the select-and-scatter of `reduce_window`'s. (Not `jnp.max` for the value alone:
    XLA:CPU fused a preceding relu into it at batch 512 and took 17 ms where `reduce_window`
    took 2.4 ms.)

    Args:
      x: `(B, *spatial, C)`.
      window: window (and stride) per spatial axis, or one int for all of them.

    Returns:
      `(B, *(s // w for s, w in zip(spatial, window)), C)`.
    """
    return _max_pool(x, _as_tuple(window, x.ndim - 2))


def _reduce_window_max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    _pooled_shape(x, window)
    dims = (1, *window, 1)
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return jax.lax.reduce_window(x, jnp.asarray(lowest, x.dtype), jax.lax.max, dims, dims, "VALID")


def _reshape_max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    return jnp.max(_windows(x, window), axis=_window_axes(len(window)))


def _value_with_gradient_of(value: Callable, differentiated: Callable, num_arrays: int) -> Callable:
    """`value(*arrays, option)` whose gradient is `differentiated`'s (the same function computed
    another way): the faster form for each. `option` is static (a window, a padding)."""

    def fwd(*args):
        *arrays, option = args
        return jax.vjp(lambda *a: differentiated(*a, option), *arrays)

    def bwd(option, pullback, g):
        return pullback(g)

    function = jax.custom_vjp(value, nondiff_argnums=(num_arrays,))
    function.defvjp(fwd, bwd)
    return function


_max_pool = _value_with_gradient_of(_reduce_window_max_pool, _reshape_max_pool, 1)


def avg_pool(x: jax.Array, window: int | Sequence[int] = 2) -> jax.Array:
    """Average pooling over non-overlapping windows; shapes as in `max_pool`."""
    window = _as_tuple(window, x.ndim - 2)
    return jnp.mean(_windows(x, window), axis=_window_axes(len(window)))


POOLS = {"max": max_pool, "avg": avg_pool}


def _as_tuple(window: int | Sequence[int], num_spatial: int) -> tuple[int, ...]:
    if isinstance(window, int):
        return (window,) * num_spatial
    return tuple(window)


def patch_convolution() -> bool:
    """Whether `conv` computes as a matmul over patches (CPU) or with XLA's convolution."""
    return jax.default_backend() == "cpu"


def _patches(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """`(..., *spatial, C)` -> `(..., *out, prod(window) * C)`: every 'VALID' window, flattened in
    the order of a `(*window, C, F)` kernel reshaped to `(prod(window) * C, F)`.

    Built as a sum of zero-padded slices, which XLA fuses into one pass over the output; a
    concatenate of the slices copies each slice first (3x slower for the seed CNN's second conv).
    """
    spatial, channels = x.shape[-len(window) - 1 : -1], x.shape[-1]
    out = [size - w + 1 for size, w in zip(spatial, window, strict=True)]
    offsets = list(itertools.product(*(range(w) for w in window)))
    unpadded = [(0, 0)] * (x.ndim - 1)
    terms = []
    for n, offset in enumerate(offsets):
        piece = x[
            (..., *(slice(o, o + size) for o, size in zip(offset, out, strict=True)), slice(None))
        ]
        channel_pad = (n * channels, (len(offsets) - 1 - n) * channels)
        terms.append(jnp.pad(piece, unpadded + [channel_pad]) if len(offsets) > 1 else piece)
    return functools.reduce(jnp.add, terms)


def conv(x: jax.Array, kernel: jax.Array, padding: str = "VALID") -> jax.Array:
    """Stride-1 convolution of channels-last `x` `(..., *spatial, C)` with `kernel`
    `(*window, C, F)`; 'VALID' or 'SAME' padding as in `nn.Conv`."""
    window = kernel.shape[:-2]
    if x.ndim < len(window) + 2 or x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"conv input {x.shape} does not fit kernel {kernel.shape}: expected "
            f"(batch, {len(window)} spatial axes, {kernel.shape[-2]} channels)"
        )
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"conv padding must be 'VALID' or 'SAME', got {padding!r}")
    spatial = x.shape[-len(window) - 1 : -1]
    if padding == "VALID" and any(s < w for s, w in zip(spatial, window, strict=True)):
        raise ValueError(f"conv window {window} is larger than the spatial shape {spatial}")
    if patch_convolution():
        return _patch_conv(x, kernel, padding)
    return _xla_conv(x, kernel, padding)


def _xla_conv(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    window = kernel.shape[:-2]
    batch = x.shape[: -len(window) - 1]
    letters = "HWD"[: len(window)]
    y = jax.lax.conv_general_dilated(
        x.reshape(-1, *x.shape[len(batch) :]),
        kernel,
        window_strides=(1,) * len(window),
        padding=padding,
        dimension_numbers=(f"N{letters}C", f"{letters}IO", f"N{letters}C"),
    )
    return y.reshape(*batch, *y.shape[1:])


def _same_padding(x: jax.Array, window: Sequence[int]) -> list[tuple[int, int]]:
    return (
        [(0, 0)] * (x.ndim - len(window) - 1) + [((w - 1) // 2, w // 2) for w in window] + [(0, 0)]
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _patch_conv(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    """XLA's convolution, with a gradient for XLA:CPU: the kernel gradient, a convolution XLA:CPU
    runs slowly, is one matmul of the output gradient with the input's patches instead."""
    return _xla_conv(x, kernel, padding)


def _patch_conv_fwd(x, kernel, padding):
    window = kernel.shape[:-2]
    padded = jnp.pad(x, _same_padding(x, window)) if padding == "SAME" else x
    patches = _patches(padded, window)  # (..., *out, K), K = prod(window) * C
    y = patches @ kernel.reshape(-1, kernel.shape[-1])  # the patches are needed anyway
    return y, (patches, kernel)


def _patch_conv_bwd(padding, residuals, dy):
    patches, kernel = residuals
    window, features = kernel.shape[:-2], kernel.shape[-1]
    # dy^T @ patches as a plain (F, N) @ (N, K) matmul: the barriers keep XLA from folding the
    # transposes into a dot contracting both operands' first axis, which XLA:CPU runs on a slow
    # generic path (3x slower here).
    dy_t = jax.lax.optimization_barrier(dy.reshape(-1, features).T)
    rows = patches.reshape(-1, patches.shape[-1])  # (N, K)
    d_kernel = jax.lax.optimization_barrier(dy_t @ rows).T.reshape(kernel.shape)
    # The input gradient is XLA's own (a convolution of dy with the flipped kernel): faster
    # than the patch form's matmul and scatter back onto the input.
    out = dy.shape[-len(window) - 1 : -1]
    spatial = out if padding == "SAME" else [o + w - 1 for o, w in zip(out, window, strict=True)]
    x = jax.ShapeDtypeStruct((*dy.shape[: -len(window) - 1], *spatial, kernel.shape[-2]), dy.dtype)
    (dx,) = jax.linear_transpose(lambda x: _xla_conv(x, kernel, padding), x)(dy)
    return dx, d_kernel


_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


class Conv(nn.Module):
    """`nn.Conv` with stride 1 and 'VALID' or 'SAME' padding, computed by `conv`.

    Same parameters (`kernel` `(*kernel_size, in, features)`, `bias` `(features,)`), initializers
    and dtype promotion as `nn.Conv`, so variables move between the two unchanged.
    """

    features: int
    kernel_size: Sequence[int]
    padding: str = "VALID"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv(x, kernel, self.padding)
        return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


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
            y = Conv(self.features, self.kernel_size, padding="SAME", use_bias=not self.batch_norm)(
                y
            )
            if self.batch_norm:
                y = nn.BatchNorm(use_running_average=not train, axis_name=self.batch_norm_axis)(y)
            if i == 0:
                y = act(y)
        if shortcut.shape[-1] != self.features:
            ones = (1,) * len(self.kernel_size)
            shortcut = Conv(self.features, ones, use_bias=False, name="projection")(shortcut)
        return act(y + shortcut)
