"""Convolution, pooling and residual blocks shared by the convolutional models.

Pooling works on channels-last arrays with any number of spatial axes, `(B, *spatial, C)`, so the
same function serves Conv1D `(B, T, C)` and Conv2D `(B, H, W, C)` stacks. Windows do not overlap
(stride == window, Keras' default) and a trailing remainder is dropped ('VALID' padding), so a
26-wide map pools to 13 and an 11-wide map to 5, as in Keras `MaxPooling2D(2)`.

Max pooling's value is `lax.reduce_window`'s. In zoo's train steps on CPU its gradient is
written by hand, much cheaper than the select-and-scatter that `reduce_window`'s own gradient
lowers to. Average pooling is a reshape and a mean.

`Conv` is `nn.Conv` for stride 1 with the same parameters. Its value is
`lax.conv_general_dilated` (cuDNN, the MXU, XLA:CPU's kernels), and outside zoo's train steps so
is its gradient: every JAX transformation applies (`jvp`, `jacfwd`, `hessian` included).

The hand-written gradients are `jax.custom_vjp`s, which forward-mode autodiff cannot pass
through, so layers take them only while traced inside `zoo.runtime.hand_written_gradients()`
on CPU, which `zoo.training`'s train steps ask for. There, how a conv trains depends on how the
step is compiled. Under `zoo.runtime.jit`, whose options switch YNNPACK's convolutions
off, XLA's (Eigen's) convolutions are fast in both directions and a wide kernel uses them as is.
Under a plain `jax.jit`, YNNPACK's convolution gradients are slow, so the gradient is written by
hand: the kernel gradient is one matmul of the input's patches (each output position's window,
flattened) with the output gradient, and the forward pass computes the output as the patches'
matmul and keeps them. A narrow kernel (a patch no wider than an output position, as in a first
layer on one channel) trains the same way under both: its forward pass is shifted slices times
kernel rows, fused with the bias and activation after it, and its backward pass rebuilds the
patches, transposed, from the smaller input. The input gradient stays XLA's own convolution.
"""

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import runtime
from zoo.layers.matmul import matmul_tn

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

    The value is `lax.reduce_window`'s; its gradient is written by hand (`_max_pool_bwd`) in
    place of the select-and-scatter that `reduce_window`'s own gradient lowers to, far slower on
    CPU. Tied maxima split the gradient, as for `jnp.max` everywhere in JAX.

    Args:
      x: `(B, *spatial, C)`.
      window: window (and stride) per spatial axis, or one int for all of them.

    Returns:
      `(B, *(s // w for s, w in zip(spatial, window)), C)`.
    """
    window = _as_tuple(window, x.ndim - 2)
    if runtime.using_hand_written_gradients():
        return _max_pool(x, window)
    return _max_pool_any_mode(x, window)


def _reduce_max(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    _pooled_shape(x, window)
    dims = (1, *window, 1)
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return jax.lax.reduce_window(x, jnp.asarray(lowest, x.dtype), jax.lax.max, dims, dims, "VALID")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_any_mode(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    return _reduce_max(x, window)


@_max_pool_any_mode.defjvp
def _max_pool_jvp(window, primals, tangents):
    """Tied maxima share the tangent, as for `jnp.max` (`reduce_window`'s own derivative gives
    it to one of them). Linear in the tangent and plain JAX, so JAX transposes it for reverse
    mode and differentiates it again for `hessian`."""
    (x,), (dx,) = primals, tangents
    # The function itself, not `_reduce_max`: under jit, jacfwd of jacrev (`jax.hessian`)
    # otherwise meets reduce_window's own derivative here, and its vmap fails.
    pooled = _max_pool_any_mode(x, window)
    out = pooled.shape[1:-1]
    offsets = list(itertools.product(*(range(w) for w in window)))
    is_max = [_at_offset(x, offset, out, window) == pooled for offset in offsets]
    count = sum(m.astype(x.dtype) for m in is_max)
    shares = [
        jnp.where(m, _at_offset(dx, o, out, window), 0)
        for m, o in zip(is_max, offsets, strict=True)
    ]
    return pooled, sum(shares) / count


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    return _reduce_max(x, window)


def _max_pool_fwd(x, window):
    pooled = _max_pool(x, window)
    return pooled, (x, pooled)


def _max_pool_bwd(window, residuals, d_pooled):
    """Each window position is one strided slice of `x` the size of the output, compared with
    the maximum; the shares are then interleaved back into `x`'s shape. XLA fuses this into a
    couple of passes over `x` (1.7 ms for the seed CNN's first pool at batch 128, against 3.2 ms
    for the gradient of a reshape and `jnp.max`, which reduces over the window axes twice)."""
    x, pooled = residuals
    out = pooled.shape[1:-1]
    offsets = list(itertools.product(*(range(w) for w in window)))
    is_max = [
        _at_offset(x, offset, out, window) == pooled for offset in offsets
    ]  # one (B, *out, C) mask per window position
    share = d_pooled / sum(m.astype(x.dtype) for m in is_max)
    grads = jnp.stack([jnp.where(m, share, 0) for m in is_max], axis=-2)  # (B, *out, P, C)
    grads = grads.reshape(x.shape[0], *out, *window, x.shape[-1])
    n = len(window)
    interleave = [0, *(a for i in range(n) for a in (1 + i, 1 + n + i)), 2 * n + 1]
    grads = grads.transpose(interleave).reshape(
        x.shape[0], *(o * w for o, w in zip(out, window, strict=True)), x.shape[-1]
    )  # (B, o1 * w1, ..., C)
    remainder = [(0, s - o * w) for s, o, w in zip(x.shape[1:-1], out, window, strict=True)]
    return (jnp.pad(grads, [(0, 0), *remainder, (0, 0)]),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _at_offset(x: jax.Array, offset: Sequence[int], out: Sequence[int], window: Sequence[int]):
    """The element at `offset` within every window of `(B, *spatial, C)`: `(B, *out, C)`."""
    strided = (slice(o, o + n * w, w) for o, n, w in zip(offset, out, window, strict=True))
    return x[(slice(None), *strided)]


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
    """Whether `conv` may take its hand-written CPU gradient (patch matmuls, shifted slices; see
    the module docstring) or is XLA's convolution throughout: only inside
    `zoo.runtime.hand_written_gradients()` (zoo's train steps) on CPU."""
    return runtime.using_hand_written_gradients()


def _patches(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """`(..., *spatial, C)` -> `(..., *out, prod(window) * C)`: every 'VALID' window, flattened in
    the order of a `(*window, C, F)` kernel reshaped to `(prod(window) * C, F)`.

    Built as a sum of zero-padded slices, which XLA fuses into one pass over the output; a
    concatenate of the slices copies each slice first (3x slower for the seed CNN's second conv).
    """
    pieces = _window_pieces(x, window)
    channels, unpadded = x.shape[-1], [(0, 0)] * (x.ndim - 1)
    if len(pieces) == 1:
        return pieces[0]
    terms = [
        jnp.pad(piece, [*unpadded, (n * channels, (len(pieces) - 1 - n) * channels)])
        for n, piece in enumerate(pieces)
    ]
    return functools.reduce(jnp.add, terms)


def _transposed_patches(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """`_patches(x, window)` flattened to `(N, K)` and transposed: `(K, N)`, built directly."""
    rows = [piece.reshape(-1, x.shape[-1]).T for piece in _window_pieces(x, window)]  # (C, N)
    return jnp.concatenate(rows, axis=0)


def _window_pieces(x: jax.Array, window: Sequence[int]) -> list[jax.Array]:
    """For each offset within a 'VALID' window, in kernel order, the slice of `(..., *spatial, C)`
    that the offset sees from every output position: `(..., *out, C)` each."""
    spatial = x.shape[-len(window) - 1 : -1]
    out = [size - w + 1 for size, w in zip(spatial, window, strict=True)]
    return [
        x[(..., *(slice(o, o + size) for o, size in zip(offset, out, strict=True)), slice(None))]
        for offset in itertools.product(*(range(w) for w in window))
    ]


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
    if not patch_convolution():
        return _xla_conv(x, kernel, padding)
    if runtime.tracing_with_cpu_options() and not _narrow_patches(kernel):
        # Under those options XLA's (Eigen's) convolutions beat the patch matmuls: seed CNN
        # train step 12.3 -> 9.8 ms at batch 128.
        return _xla_conv(x, kernel, padding)
    return _patch_conv(x, kernel, padding)


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


def _narrow_patches(kernel: jax.Array) -> bool:
    """Whether a patch (`prod(window) * C` values) is no wider than an output position (`F`), as
    for a first layer on one input channel."""
    return math.prod(kernel.shape[:-1]) <= kernel.shape[-1]


def _shifted_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' convolution as `prod(window) * C` slices of `x`, one input channel each, times a
    kernel row: one elementwise pass that XLA fuses with the bias and activation after it. For a
    narrow kernel in a train step (seed CNN's first layer at batch 128: 14.6 -> 12.3 ms); at
    inference XLA would recompute it inside every consumer (2.8 -> 4.1 ms), so the primal keeps
    XLA's convolution."""
    pieces = _window_pieces(x, kernel.shape[:-2])
    rows = kernel.reshape(len(pieces), *kernel.shape[-2:])  # (offsets, C, F)
    rows = rows.reshape(rows.shape[:2] + (1,) * (x.ndim - 1) + rows.shape[-1:])
    terms = (
        piece[..., c : c + 1] * rows[n, c]
        for n, piece in enumerate(pieces)
        for c in range(kernel.shape[-2])
    )
    return functools.reduce(jnp.add, terms)


def _patch_conv_fwd(x, kernel, padding):
    window = kernel.shape[:-2]
    padded = jnp.pad(x, _same_padding(x, window)) if padding == "SAME" else x
    if _narrow_patches(kernel):
        # The backward pass rebuilds the patches, transposed, from the (smaller) input.
        return _shifted_conv(padded, kernel), (padded, kernel)
    patches = _patches(padded, window)  # (..., *out, K), K = prod(window) * C
    y = patches @ kernel.reshape(-1, kernel.shape[-1])  # the patches are needed anyway
    return y, (patches, kernel)


def _patch_conv_bwd(padding, residuals, dy):
    saved, kernel = residuals
    window, features = kernel.shape[:-2], kernel.shape[-1]
    if _narrow_patches(kernel):
        # (K, N) @ (N, F), the transposed patches built in one pass over the input: a copy of
        # patches built in the forward pass fed two consumers here, and XLA materialized each
        # of its padded slices (seed CNN at batch 512: 9 x 5 ms).
        rows = dy.reshape(-1, features)
        d_kernel = (_transposed_patches(saved, window) @ rows).reshape(kernel.shape)
    else:
        d_kernel = matmul_tn(saved, dy).reshape(kernel.shape)  # (K, F)
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
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = activation(self.activation)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        shortcut = x
        y = x
        for i in range(2):
            y = Conv(
                self.features, self.kernel_size, "SAME", use_bias=not self.batch_norm, **dtypes
            )(y)
            if self.batch_norm:
                y = nn.BatchNorm(
                    use_running_average=not train, axis_name=self.batch_norm_axis, **dtypes
                )(y)
            if i == 0:
                y = act(y)
        if shortcut.shape[-1] != self.features:
            ones = (1,) * len(self.kernel_size)
            shortcut = Conv(self.features, ones, use_bias=False, name="projection", **dtypes)(
                shortcut
            )
        return act(y + shortcut)
