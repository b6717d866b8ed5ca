"""Convolution, pooling and residual blocks shared by the convolutional models.

Pooling works on channels-last arrays with any number of spatial axes, `(B, *spatial, C)`, so the
same function serves Conv1D `(B, T, C)` and Conv2D `(B, H, W, C)` stacks. By default windows do
not overlap (stride == window, Keras' default) and a trailing remainder is dropped ('VALID'
padding), so a 26-wide map pools to 13 and an 11-wide map to 5, as in Keras `MaxPooling2D(2)`.
A stride apart from the window and padding (ResNet's 3x3 stride-2 max pool with one pixel each
side) take the general path: the maximum or mean over one strided slice per window offset.

Max pooling's value is `lax.reduce_window`'s. In zoo's train steps on CPU its gradient is
written by hand, much cheaper than the select-and-scatter that `reduce_window`'s own gradient
lowers to. Average pooling is a reshape and a mean.

`Conv` is `nn.Conv` with the same parameters: strides, dilation, `feature_group_count`
(depthwise and grouped convolutions), padding 'VALID', 'SAME', 'CAUSAL' (1-D) or explicit
`(low, high)` pairs. Its value is `lax.conv_general_dilated` (cuDNN, the MXU, XLA:CPU's kernels),
and outside zoo's train steps so is its gradient: every JAX transformation applies (`jvp`,
`jacfwd`, `hessian` included). Only stride-1, undilated, ungrouped 'VALID'/'SAME' convolutions
have the CPU fast paths below; a depthwise convolution (as many groups as channels and
features) on CPU is a sum of shifted slices times per-channel weights, in both directions plain
JAX; the others are XLA's convolution in both directions.

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


def max_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """Max pooling.

    With the defaults (stride == window, 'VALID') the value is `lax.reduce_window`'s and its
    gradient in zoo's train steps is written by hand (`_max_pool_bwd`) in place of the
    select-and-scatter that `reduce_window`'s own gradient lowers to, far slower on CPU.
    Otherwise it is the maximum over one strided slice per window offset, plain JAX. Tied
    maxima split the gradient, as for `jnp.max` everywhere in JAX; padding never wins.

    Args:
      x: `(B, *spatial, C)`.
      window: window per spatial axis, or one int for all of them.
      strides: step per spatial axis (one int for all); None: the window.
      padding: 'VALID', 'SAME' (as `lax.reduce_window`) or one `(low, high)` pair per axis.

    Returns:
      `(B, *out, C)`; with the defaults `out = spatial // window`.
    """
    window, strides = _window_and_strides(x, window, strides)
    if strides != window or padding != "VALID":
        return _strided_pool(x, window, strides, padding, "max")
    if runtime.using_hand_written_gradients():
        return _max_pool(x, window)
    return _max_pool_any_mode(x, window)


def _window_and_strides(x, window, strides) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if x.ndim < 3:
        raise ValueError(f"pooling expects (batch, *spatial, channels), got shape {x.shape}")
    window = _as_tuple(window, x.ndim - 2)
    strides = window if strides is None else _as_tuple(strides, x.ndim - 2)
    if len(window) != x.ndim - 2 or len(strides) != x.ndim - 2:
        raise ValueError(
            f"pool window {window} and strides {strides} do not match spatial shape {x.shape[1:-1]}"
        )
    if min(window) < 1 or min(strides) < 1:
        raise ValueError(f"pool window {window} and strides {strides} must be positive")
    return window, strides


def _strided_pool(x, window, strides, padding, kind: str) -> jax.Array:
    """Max or mean over one strided slice of (padded) `x` per window offset: plain JAX, so
    every transformation applies. The mean counts real elements only (Keras' 'same')."""
    spatial = x.shape[1:-1]
    pads = _explicit_padding(padding, spatial, window, strides, (1,) * len(window), "pool")
    out = [
        (size + lo + hi - w) // s + 1
        for size, (lo, hi), w, s in zip(spatial, pads, window, strides, strict=True)
    ]
    if min(out) < 1:
        raise ValueError(f"pool window {window} is larger than the padded spatial shape {spatial}")
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    fill = lowest if kind == "max" else 0
    full = [(0, 0), *pads, (0, 0)]
    padded = jnp.pad(x, full, constant_values=jnp.asarray(fill, x.dtype))
    pieces = [_strided_slice(padded, offset, out, strides) for offset in _offsets(window)]
    if kind == "max":
        return jnp.max(jnp.stack(pieces), axis=0)
    ones = jnp.pad(jnp.ones((1, *spatial, 1), x.dtype), full)
    counts = sum(_strided_slice(ones, offset, out, strides) for offset in _offsets(window))
    return sum(pieces) / counts


def _offsets(window: Sequence[int]):
    return itertools.product(*(range(w) for w in window))


def _strided_slice(x, offset, out, strides) -> jax.Array:
    """`x[:, o1 : o1 + s1 * n1 : s1, ..., :]`: what window offset `offset` sees from each of the
    `out` positions."""
    index = (slice(o, o + s * (n - 1) + 1, s) for o, n, s in zip(offset, out, strides, strict=True))
    return x[(slice(None), *index)]


def global_avg_pool(x: jax.Array) -> jax.Array:
    """`(B, *spatial, C)` -> `(B, C)`: the mean over every spatial position."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def global_max_pool(x: jax.Array) -> jax.Array:
    """`(B, *spatial, C)` -> `(B, C)`: the maximum over every spatial position."""
    return jnp.max(x, axis=tuple(range(1, x.ndim - 1)))


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


def avg_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """Average pooling; arguments and shapes as in `max_pool`. Padded positions are not
    counted in the mean (Keras' `AveragePooling2D(padding='same')`)."""
    window, strides = _window_and_strides(x, window, strides)
    if strides != window or padding != "VALID":
        return _strided_pool(x, window, strides, padding, "avg")
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


Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]


def conv(
    x: jax.Array,
    kernel: jax.Array,
    padding: Padding = "VALID",
    strides: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> jax.Array:
    """Convolution of channels-last `x` `(..., *spatial, C)` with `kernel`
    `(*window, C // groups, F)`, as `nn.Conv` computes it.

    Args:
      padding: 'VALID', 'SAME' (output `ceil(size / stride)`, the extra pixel at the end, as
        Keras and `lax`), 'CAUSAL' (1-D only: `(window - 1) * dilation` zeros before the
        sequence, none after), an int for both sides of every axis, or one int or `(low, high)`
        pair per axis.
      strides: step per spatial axis, or one int for all.
      dilation: kernel dilation per spatial axis (atrous convolution), or one int for all.
      groups: `feature_group_count`; `C` and `F` divisible by it. `groups == C` with `F` a
        multiple of `C` is a depthwise convolution.
    """
    window = kernel.shape[:-2]
    num_spatial = len(window)
    strides, dilation = _as_tuple(strides, num_spatial), _as_tuple(dilation, num_spatial)
    if (
        x.ndim < num_spatial + 2
        or groups < 1
        or x.shape[-1] != kernel.shape[-2] * groups
        or kernel.shape[-1] % groups
    ):
        per_group = "" if groups == 1 else f" in {groups} groups"
        raise ValueError(
            f"conv input {x.shape} does not fit kernel {kernel.shape}{per_group}: expected "
            f"(batch, {num_spatial} spatial axes, {kernel.shape[-2] * groups} channels) and "
            f"features divisible by the groups"
        )
    if len(strides) != num_spatial or len(dilation) != num_spatial:
        raise ValueError(
            f"conv strides {strides} and dilation {dilation} need one value per spatial axis of "
            f"kernel {kernel.shape}"
        )
    if min(strides) < 1 or min(dilation) < 1:
        raise ValueError(f"conv strides {strides} and dilation {dilation} must be positive")
    spatial = x.shape[-num_spatial - 1 : -1]
    pads = _explicit_padding(padding, spatial, window, strides, dilation, "conv")
    effective = [(w - 1) * d + 1 for w, d in zip(window, dilation, strict=True)]
    if any(s + lo + hi < e for s, (lo, hi), e in zip(spatial, pads, effective, strict=True)):
        raise ValueError(
            f"conv window {tuple(effective)} (dilated) is larger than the padded spatial shape "
            f"{tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads, strict=True))}"
        )
    if groups == x.shape[-1] == kernel.shape[-1] and jax.default_backend() == "cpu":
        return _depthwise_conv(x, kernel, pads, strides, dilation)
    plain = strides == (1,) * num_spatial and dilation == (1,) * num_spatial and groups == 1
    if not plain or padding not in ("VALID", "SAME"):
        return _xla_conv(x, kernel, pads, strides, dilation, groups)
    if not patch_convolution():
        return _xla_conv(x, kernel, padding)
    if runtime.tracing_with_cpu_options() and not _narrow_patches(kernel):
        # Under those options XLA's (Eigen's) convolutions beat the patch matmuls: seed CNN
        # train step 12.3 -> 9.8 ms at batch 128.
        return _xla_conv(x, kernel, padding)
    return _patch_conv(x, kernel, padding)


def _explicit_padding(
    padding: Padding,
    spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    what: str,
) -> list[tuple[int, int]]:
    """`padding` as one `(low, high)` pair per spatial axis, or an error naming it."""
    effective = [(w - 1) * d + 1 for w, d in zip(window, dilation, strict=True)]
    if isinstance(padding, str):
        if padding == "VALID":
            return [(0, 0)] * len(spatial)
        if padding == "SAME":
            pads = []
            for size, e, s in zip(spatial, effective, strides, strict=True):
                total = max((-(-size // s) - 1) * s + e - size, 0)
                pads.append((total // 2, total - total // 2))
            return pads
        if padding == "CAUSAL":
            if len(spatial) != 1:
                raise ValueError(
                    f"{what} padding 'CAUSAL' is for 1-D (batch, steps, channels) input, got "
                    f"{len(spatial)} spatial axes"
                )
            return [(effective[0] - 1, 0)]
        raise ValueError(
            f"{what} padding must be 'VALID', 'SAME', 'CAUSAL', an int or (low, high) pairs, "
            f"got {padding!r}"
        )
    if isinstance(padding, int):
        padding = [padding] * len(spatial)
    try:
        pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    except TypeError:
        pairs = []
    if len(pairs) != len(spatial) or any(
        len(p) != 2 or not all(isinstance(v, int) and v >= 0 for v in p) for p in pairs
    ):
        raise ValueError(
            f"{what} padding {padding!r} must give one non-negative int or (low, high) pair per "
            f"spatial axis ({len(spatial)})"
        )
    return pairs


def _xla_conv(
    x: jax.Array,
    kernel: jax.Array,
    padding: str | Sequence[tuple[int, int]],
    strides: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    groups: int = 1,
) -> jax.Array:
    window = kernel.shape[:-2]
    batch = x.shape[: -len(window) - 1]
    letters = "HWD"[: len(window)]
    y = jax.lax.conv_general_dilated(
        x.reshape(-1, *x.shape[len(batch) :]),
        kernel,
        window_strides=strides or (1,) * len(window),
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=(f"N{letters}C", f"{letters}IO", f"N{letters}C"),
        feature_group_count=groups,
    )
    return y.reshape(*batch, *y.shape[1:])


def _depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    pads: Sequence[tuple[int, int]],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> jax.Array:
    """A depthwise convolution (one filter per channel, `kernel` `(*window, 1, C)`) as the sum
    over the window's offsets of the padded input's strided slice times that offset's weights.

    Plain JAX, so every transformation applies; XLA fuses it into one loop, where XLA:CPU's
    grouped convolution is slow: at batch 128, a 3x3 over 16x16x96 took 9.5 against 224 ms
    forward, and 167 against 850 ms for both gradients (2026-12-04, 2-core CPU).
    """
    window = kernel.shape[:-2]
    batch = x.shape[: -len(window) - 1]
    x = x.reshape(-1, *x.shape[len(batch) :])
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    out = [
        (size - (w - 1) * d - 1) // s + 1
        for size, w, d, s in zip(x.shape[1:-1], window, dilation, strides, strict=True)
    ]
    y = None
    for offset in _offsets(window):
        start = [o * d for o, d in zip(offset, dilation, strict=True)]
        weights = kernel[(*offset, 0)].reshape((1,) * (x.ndim - 1) + (-1,))  # (1, ..., C)
        term = _strided_slice(x, start, out, strides) * weights  # (N, *out, C)
        y = term if y is None else y + term
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
    """`nn.Conv`, computed by `conv`: strides, dilation, groups and every padding of `conv`.

    Same parameters (`kernel` `(*kernel_size, in // feature_group_count, features)`, `bias`
    `(features,)`), initializers and dtype promotion as `nn.Conv`, so variables move between the
    two unchanged.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "VALID"
    kernel_dilation: int | Sequence[int] = 1
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = self.feature_group_count
        if x.shape[-1] % groups:
            raise ValueError(
                f"Conv input channels ({x.shape[-1]}) are not divisible by "
                f"feature_group_count={groups}"
            )
        shape = (*self.kernel_size, x.shape[-1] // groups, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv(x, kernel, self.padding, self.strides, self.kernel_dilation, groups)
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
                self.features,
                self.kernel_size,
                padding="SAME",
                use_bias=not self.batch_norm,
                **dtypes,
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
