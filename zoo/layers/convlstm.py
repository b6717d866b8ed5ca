"""ConvLSTM (Shi et al. 2015): an LSTM whose matmuls are 2-D convolutions, run over frames.

Weight layout, Keras' `ConvLSTM2D` (so `from_keras_convlstm` only checks shapes), for C input
channels, F filters and a `(kh, kw)` window:

    kernel (kh, kw, C, 4F), recurrent_kernel (kh, kw, F, 4F), bias (4F,);
    gate order i, f, g, o (Keras calls g "c"); the forget-gate bias starts at 1 (Keras'
    `unit_forget_bias`).

Equations, with ⋆ a stride-1 2-D convolution, x_t `(B, H, W, C)` and the carry h, c
`(B, H', W', F)`:

    i = σ(x ⋆ W_i + h ⋆ U_i + b_i)      f = σ(x ⋆ W_f + h ⋆ U_f + b_f)
    g = tanh(x ⋆ W_g + h ⋆ U_g + b_g)   o = σ(x ⋆ W_o + h ⋆ U_o + b_o)
    c' = f ⊙ c + i ⊙ g                  h' = o ⊙ tanh(c')

without Shi et al.'s peephole terms (`W_ci ⊙ c`), as Keras. The input convolution pads 'SAME'
(H' = H) or 'VALID' (H' = H - kh + 1); the recurrent one always pads 'SAME', so the state keeps
its shape from step to step (Keras' `recurrent_conv`).

The layer convolves every frame's input at once before the scan (one convolution over B*T
frames, as `zoo.layers.recurrent` hoists `x W + b` on GPU) and runs only `h ⋆ U` inside it.
The convolutions are `zoo.layers.conv.conv`: XLA's, so `jvp`, `jacfwd` and `hessian` pass
through, with its CPU gradient inside zoo's train steps. With `lengths`, a sequence's carry stops
changing after its last valid step and its outputs there are zero, as in `recurrent.scan_steps`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers.conv import conv
from zoo.layers.recurrent import LSTMState, check_lengths, lengths_to_mask, scan_steps

CellParams = dict[str, jax.Array]
PADDINGS = ("SAME", "VALID")


def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` over the last axis, broadcast explicitly (safe under strict rank promotion)."""
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def project_frames(x: jax.Array, params: CellParams, padding: str = "SAME") -> jax.Array:
    """The input half of every gate, `x ⋆ W + b`: `(..., H, W, C)` -> `(..., H', W', 4F)`."""
    return _add_bias(conv(x, params["kernel"], padding), params["bias"])


def same_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution of `(..., H, W, C)` with `(kh, kw, C, F)` as one matmul of
    `x`'s patches `(..., H, W, kh * kw * C)` with the kernel `(kh * kw * C, F)`.

    The recurrent convolution runs once per step inside the scan, where XLA:CPU's own
    convolution gradient is slow (the default ConvLSTM's train step at batch 32 took 3.5 s with
    it, 0.25 s as matmuls); the patch matmul's derivatives, forward and reverse, are plain
    matmuls and slices.
    """
    window = kernel.shape[:2]
    pads = [(0, 0)] * (x.ndim - 3) + [((w - 1) // 2, w // 2) for w in window] + [(0, 0)]
    padded = jnp.pad(x, pads)
    height, width = x.shape[-3:-1]
    pieces = [
        padded[..., dy : dy + height, dx : dx + width, :]
        for dy in range(window[0])
        for dx in range(window[1])
    ]  # in the order of the kernel's (kh, kw) axes
    patches = jnp.concatenate(pieces, axis=-1)  # (..., H, W, kh * kw * C)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def convlstm_step(
    params: CellParams, carry: LSTMState, projected: jax.Array
) -> tuple[LSTMState, jax.Array]:
    """The recurrent half of a ConvLSTM step; `projected` is `x ⋆ W + b`, `(B, H', W', 4F)`.

    Returns `(LSTMState(h', c'), h')`, each `(B, H', W', F)`.
    """
    gates = projected + same_conv(carry.h, params["recurrent_kernel"])  # (B, H', W', 4F)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMState(h, c), h


def convlstm_cell(
    params: CellParams, carry: LSTMState, x: jax.Array, *, padding: str = "SAME"
) -> tuple[LSTMState, jax.Array]:
    """One ConvLSTM step with scan's signature: `(carry, x (B, H, W, C)) -> (carry, h)`.

    Args:
      params: `kernel (kh, kw, C, 4F)`, `recurrent_kernel (kh, kw, F, 4F)`, `bias (4F,)`.
      carry: `LSTMState(h, c)`, each `(B, H', W', F)`.
      x: one frame per sequence, `(B, H, W, C)`.
      padding: the input convolution's, 'SAME' (H' = H) or 'VALID' (H' = H - kh + 1).

    Returns:
      `(LSTMState(h', c'), h' (B, H', W', F))`.
    """
    return convlstm_step(params, carry, project_frames(x, params, padding))


def initial_state(batch: int, spatial: Sequence[int], filters: int, dtype=jnp.float32):
    """The zero carry `LSTMState(h, c)`, each `(batch, *spatial, filters)`."""
    zeros = jnp.zeros((batch, *spatial, filters), dtype)
    return LSTMState(zeros, zeros)


def _forget_bias_init(key, shape, dtype=jnp.float32):
    filters = shape[0] // 4
    return jnp.zeros(shape, dtype).at[filters : 2 * filters].set(1.0)  # forget gate starts open


class ConvLSTM(nn.Module):
    """One ConvLSTM layer over frames `(B, T, H, W, C)` (Keras' `ConvLSTM2D`, stride 1).

    Returns `(outputs, final_state)`: `outputs` is `(B, T, H', W', F)` with `return_sequences`,
    else the last valid step's `h` `(B, H', W', F)`; `final_state` is `LSTMState(h, c)` at each
    sequence's last valid step. `lengths` `(B,)` mark right-padded sequences. Parameters are
    named as in the module docstring, so `variables["params"]` is what `convlstm_cell` takes;
    initializers are Keras' (Glorot uniform, orthogonal, zeros with the forget bias at 1).
    """

    filters: int
    kernel_size: Sequence[int] = (3, 3)
    padding: str = "SAME"  # of the input convolution; the recurrent one is always 'SAME'
    return_sequences: bool = False
    dtype: Any = None  # of the computation and the carry; None: promoted from inputs and params
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, lengths: jax.Array | None = None
    ) -> tuple[jax.Array, LSTMState]:
        check_options(self.filters, self.kernel_size, self.padding)
        if x.ndim != 5:
            raise ValueError(
                f"ConvLSTM takes frames (batch, steps, height, width, channels), got shape "
                f"{x.shape}"
            )
        batch, steps, height, width, channels = x.shape
        window = tuple(self.kernel_size)
        if self.padding == "VALID" and (height < window[0] or width < window[1]):
            raise ValueError(
                f"ConvLSTM frames of {height}x{width} are smaller than the {window} window "
                "with padding 'VALID'"
            )
        gates, dtype = 4 * self.filters, self.param_dtype
        params = {
            "kernel": self.param(
                "kernel", nn.initializers.glorot_uniform(), (*window, channels, gates), dtype
            ),
            "recurrent_kernel": self.param(
                "recurrent_kernel",
                nn.initializers.orthogonal(),
                (*window, self.filters, gates),
                dtype,
            ),
            "bias": self.param("bias", _forget_bias_init, (gates,), dtype),
        }
        x, *values = nn.dtypes.promote_dtype(x, *params.values(), dtype=self.dtype)
        params = dict(zip(params, values, strict=True))  # in the computation's dtype
        mask = None
        if lengths is not None:
            mask = lengths_to_mask(check_lengths(lengths, batch, steps), steps)  # (B, T)
        projected = project_frames(x, params, self.padding)  # (B, T, H', W', 4F)
        carry = initial_state(batch, projected.shape[2:4], self.filters, x.dtype)
        state, outputs = scan_steps(convlstm_step, params, carry, projected, mask)
        return (outputs if self.return_sequences else state.h), state


def check_options(filters: int, kernel_size: Sequence[int], padding: str) -> None:
    """Rejects a ConvLSTM layer's filters, kernel_size or padding that cannot work, naming it."""
    if filters < 1:
        raise ValueError(f"ConvLSTM filters must be positive, got {filters}")
    if len(kernel_size) != 2 or min(kernel_size) < 1:
        raise ValueError(
            f"ConvLSTM kernel_size must be two positive ints (height, width), got {kernel_size}"
        )
    if padding not in PADDINGS:
        raise ValueError(
            f"ConvLSTM padding must be one of {', '.join(PADDINGS)} (the recurrent convolution "
            f"always pads 'SAME'), got {padding!r}"
        )


def from_keras_convlstm(weights: Sequence[Any]) -> dict[str, np.ndarray]:
    """Converts one Keras `ConvLSTM2D`'s `get_weights()` to the params of a zoo `ConvLSTM`.

    Keras' layout is zoo's (`kernel (kh, kw, C, 4F)`, `recurrent_kernel (kh, kw, F, 4F)`,
    `bias (4F,)`, gates i, f, c, o); a layer built with `use_bias=False` gets a zero bias. The
    Keras layer must be channels-last with strides and dilation 1, and its padding is the zoo
    layer's `padding`.

    Raises:
      ValueError: for a weight count or shapes that are not one ConvLSTM2D's, naming them.
    """
    weights = [np.asarray(w, np.float32) for w in weights]
    if len(weights) not in (2, 3):
        raise ValueError(
            "a Keras ConvLSTM2D has 3 weight arrays (kernel, recurrent_kernel, bias), or 2 "
            f"without a bias; got {len(weights)}"
        )
    kernel, recurrent = weights[:2]
    if kernel.ndim != 4 or recurrent.ndim != 4 or kernel.shape[-1] % 4:
        raise ValueError(
            f"Keras ConvLSTM2D kernel {kernel.shape} and recurrent_kernel {recurrent.shape} must "
            "be (kh, kw, channels, 4 * filters) and (kh, kw, filters, 4 * filters): is this a "
            "channels-last ConvLSTM2D?"
        )
    filters = kernel.shape[-1] // 4
    if recurrent.shape != (*kernel.shape[:2], filters, 4 * filters):
        raise ValueError(
            f"Keras ConvLSTM2D recurrent_kernel has shape {recurrent.shape}; kernel "
            f"{kernel.shape} expects {(*kernel.shape[:2], filters, 4 * filters)}"
        )
    bias = weights[2] if len(weights) == 3 else np.zeros(4 * filters, np.float32)
    if bias.shape != (4 * filters,):
        raise ValueError(f"Keras ConvLSTM2D bias has shape {bias.shape}, expected ({4 * filters},)")
    return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": bias}
