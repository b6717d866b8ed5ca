"""Simple RNN, LSTM and GRU cells as pure step functions, and layers that scan them over time.

Weight layout (shared by the pure cells, the Flax layers and the importers), for input size F and
hidden size H:

    RNN:  kernel (F, H), recurrent_kernel (H, H), bias (H,); PyTorch's two biases import as
          their sum.
    LSTM: kernel (F, 4H), recurrent_kernel (H, 4H), bias (4H,);
          gate order i, f, g, o (PyTorch's and Keras' order). The forget-gate bias starts at 1
          (Keras' `unit_forget_bias`); PyTorch's two biases import as their sum.
    GRU:  kernel (F, 3H), recurrent_kernel (H, 3H), bias (3H,), and with `reset_after=True`
          recurrent_bias (3H,); gate order r, z, n (PyTorch's order; Keras' z, r, h is
          reordered on import).

Equations, with x_t the input and h, c the carry:

    RNN   h' = tanh(x W + h U + b)  (Elman 1990; `activation="relu"` for relu, as PyTorch's
          `nonlinearity` and Keras' `SimpleRNN(activation=...)`)
    LSTM  i = σ(x W_i + h U_i + b_i)      f = σ(x W_f + h U_f + b_f)
          g = tanh(x W_g + h U_g + b_g)   o = σ(x W_o + h U_o + b_o)
          c' = f ⊙ c + i ⊙ g              h' = o ⊙ tanh(c')
    GRU   r = σ(x W_r + b_r + h U_r + b'_r)    z = σ(x W_z + b_z + h U_z + b'_z)
          reset_after=True  (PyTorch, Keras default): n = tanh(x W_n + b_n + r ⊙ (h U_n + b'_n))
          reset_after=False (Cho et al. 2014, Keras v1): n = tanh(x W_n + b_n + (r ⊙ h) U_n)
          h' = (1 - z) ⊙ n + z ⊙ h

On GPU and TPU the input projection `x W + b` of all timesteps is one matmul before the scan and
only `h U` runs inside it (`lstm_step`, `gru_step`); on CPU each step projects its own `x`, which
measured faster there (2x forward, 1.2x with gradients for 2 x LSTM(128) on a 2-core CPU: the
per-step slices of a hoisted `(T, B, 4H)` array cost more than the small matmuls they save).
In zoo's train steps on CPU the layers' gradient is also written by hand (`scan_cell`, a
`jax.custom_vjp`): the backward scan carries only the state's gradient and the weight gradients
are matmuls over all timesteps after it. Forward mode (`jvp`, `jacfwd`) cannot pass through a
`custom_vjp`, so the layers take it only while traced inside
`zoo.runtime.hand_written_gradients()`, as the CPU convolution in `zoo.layers.conv` does;
elsewhere the scan is plain JAX.
With `lengths`, a sequence's carry stops changing after its last valid step and its outputs there
are zero, so a padded batch gives each sequence's own result.

Recurrent dropout (Gal & Ghahramani 2016; Keras' `recurrent_dropout`) multiplies the `h` that
enters `h U` by a mask `(B, H)` drawn once per sequence, before the scan, and used at every step.

`StackedRNN(..., implementation="cudnn")` runs a whole LSTM stack as cuDNN's fused kernel instead
(`zoo.layers.cudnn`): opt-in and experimental, CUDA only, with the same params.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import runtime
from zoo.layers.matmul import matmul_tn

CellParams = dict[str, jax.Array]
Carry = Any  # LSTMState for LSTM, an (B, H) array for GRU and the simple RNN


class LSTMState(NamedTuple):
    """LSTM carry: hidden state `h` and cell state `c`, each `(B, H)`."""

    h: jax.Array
    c: jax.Array


GATES = {"rnn": 1, "lstm": 4, "gru": 3}
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}  # of the simple RNN


def check_cell(cell: str, activation: str = "tanh") -> None:
    """Rejects a cell name other than 'rnn', 'lstm' and 'gru', and an activation other than
    tanh for a cell that has none to choose, naming the choices."""
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; choose from: {', '.join(GATES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose from: {', '.join(ACTIVATIONS)}"
        )
    if cell != "rnn" and activation != "tanh":
        raise ValueError(f"activation={activation!r} applies to cell='rnn' only, not {cell!r}")


IMPLEMENTATIONS = ("scan", "cudnn")  # StackedRNN's: zoo's lax.scan, or cuDNN's fused LSTM


def check_implementation(
    implementation: str,
    cell: str,
    hidden_sizes: Sequence[int] = (),
    recurrent_dropout: float = 0.0,
) -> None:
    """Rejects an unknown `implementation`, and 'cudnn' with a configuration cuDNN's LSTM cannot
    run (another cell, layers of different sizes, recurrent dropout), saying what applies: asked
    for by name, it is never swapped for the scan behind the user's back."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; choose from: {', '.join(IMPLEMENTATIONS)}"
        )
    if implementation != "cudnn":
        return
    if cell != "lstm":
        raise ValueError(
            f"implementation='cudnn' runs LSTMs only, not cell={cell!r}; use implementation='scan'"
        )
    if len(set(hidden_sizes)) > 1:
        raise ValueError(
            f"implementation='cudnn' needs one hidden size for every layer (cuDNN stacks layers "
            f"of one size), got hidden_sizes={tuple(hidden_sizes)}"
        )
    if recurrent_dropout:
        raise ValueError(
            f"implementation='cudnn' has no recurrent dropout (cuDNN's LSTM has none), got "
            f"recurrent_dropout={recurrent_dropout}; use implementation='scan'"
        )


def project(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`x @ kernel + bias` with the bias broadcast explicitly (safe under strict rank promotion)."""
    y = x @ kernel
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def rnn_step(
    params: CellParams,
    carry: jax.Array,
    projected: jax.Array,
    *,
    activation: str = "tanh",
    h_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The recurrent half of a simple RNN step; `projected` is `x W + b`, `(B, H)`; `h_mask`
    `(B, H)` is the recurrent dropout mask."""
    h_in = carry if h_mask is None else carry * h_mask
    return _RNN_UPDATES[activation](carry, _sum_gates(projected, h_in @ params["recurrent_kernel"]))


def _sum_gates(projected: jax.Array, recurrent: jax.Array) -> jax.Array:
    """An LSTM's or simple RNN's pre-activations from `x W + b` and `h U`: their sum."""
    return projected + recurrent


def _rnn_update(activation, carry: jax.Array, gates: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = activation(gates)
    return h, h


# One update per activation, made once: the hand-written gradient keys its cell on them.
_RNN_UPDATES = {name: functools.partial(_rnn_update, f) for name, f in ACTIVATIONS.items()}


def lstm_step(
    params: CellParams,
    carry: LSTMState,
    projected: jax.Array,
    *,
    h_mask: jax.Array | None = None,
) -> tuple[LSTMState, jax.Array]:
    """The recurrent half of an LSTM step; `projected` is `x W + b`, `(B, 4H)`; `h_mask` `(B, H)`
    is the recurrent dropout mask."""
    h_in = carry.h if h_mask is None else carry.h * h_mask
    return _lstm_update(carry, _sum_gates(projected, h_in @ params["recurrent_kernel"]))


def _lstm_update(carry: LSTMState, gates: jax.Array) -> tuple[LSTMState, jax.Array]:
    """The pointwise rest of an LSTM step, given its pre-activations."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMState(h, c), h


def gru_step(
    params: CellParams,
    carry: jax.Array,
    projected: jax.Array,
    *,
    reset_after: bool = True,
    h_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The recurrent half of a GRU step; `projected` is `x W + b`, `(B, 3H)`; `h_mask` `(B, H)`
    is the recurrent dropout mask (it touches `h U` only, not the `z ⊙ h` update)."""
    recurrent = params["recurrent_kernel"]  # (H, 3H)
    h_in = carry if h_mask is None else carry * h_mask
    if reset_after:
        recurrent = project(h_in, recurrent, params["recurrent_bias"])
        return _gru_update(carry, _gru_gates(projected, recurrent))
    hidden = carry.shape[-1]
    x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
    h_r, h_z = jnp.split(h_in @ recurrent[:, : 2 * hidden], 2, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + (r * h_in) @ recurrent[:, 2 * hidden :])
    h = (1.0 - z) * n + z * carry
    return h, h


def _gru_gates(projected: jax.Array, recurrent: jax.Array) -> jax.Array:
    """A `reset_after` GRU's pre-activations `(B, 4H)` from `x W + b` and `h U + b'` `(B, 3H)`:
    the reset and update gates' sums, then the candidate's two halves."""
    width = 2 * projected.shape[-1] // 3
    return jnp.concatenate(
        [
            projected[..., :width] + recurrent[..., :width],
            projected[..., width:],
            recurrent[..., width:],
        ],
        axis=-1,
    )


def _gru_update(carry: jax.Array, gates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The pointwise rest of a `reset_after` GRU step, given its pre-activations."""
    r, z, x_n, h_n = jnp.split(gates, 4, axis=-1)
    r, z = jax.nn.sigmoid(r), jax.nn.sigmoid(z)
    h = (1.0 - z) * jnp.tanh(x_n + r * h_n) + z * carry
    return h, h


def rnn_cell(
    params: CellParams,
    carry: jax.Array,
    x: jax.Array,
    *,
    activation: str = "tanh",
    h_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One simple RNN step with scan's signature: `(h (B, H), x (B, F)) -> (h, h)`."""
    projected = project(x, params["kernel"], params["bias"])
    return rnn_step(params, carry, projected, activation=activation, h_mask=h_mask)


def lstm_cell(
    params: CellParams, carry: LSTMState, x: jax.Array, *, h_mask: jax.Array | None = None
) -> tuple[LSTMState, jax.Array]:
    """One LSTM step with scan's signature: `(carry, x (B, F)) -> (carry, h (B, H))`."""
    return lstm_step(params, carry, project(x, params["kernel"], params["bias"]), h_mask=h_mask)


def gru_cell(
    params: CellParams,
    carry: jax.Array,
    x: jax.Array,
    *,
    reset_after: bool = True,
    h_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One GRU step with scan's signature: `(h (B, H), x (B, F)) -> (h, h)`."""
    projected = project(x, params["kernel"], params["bias"])
    return gru_step(params, carry, projected, reset_after=reset_after, h_mask=h_mask)


def dropout_mask(key: jax.Array, shape: tuple[int, ...], rate: float, dtype=jnp.float32):
    """Inverted-dropout mask: 0 with probability `rate`, else `1 / (1 - rate)`."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


def initial_carry(cell: str, batch_size: int, hidden_size: int, dtype=jnp.float32) -> Carry:
    zeros = jnp.zeros((batch_size, hidden_size), dtype)
    return LSTMState(zeros, zeros) if cell == "lstm" else zeros


def lengths_to_mask(lengths: jax.Array, steps: int) -> jax.Array:
    """`(B,)` lengths to a `(B, T)` boolean mask, True on valid steps."""
    return jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]


def check_lengths(lengths: Any, batch_size: int, steps: int) -> jax.Array:
    """Validates `lengths` against a `(B, T, ...)` batch; values are checked when concrete."""
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch_size,):
        raise ValueError(f"lengths must have shape ({batch_size},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > steps):
            raise ValueError(
                f"lengths must be in [0, {steps}] for sequences of {steps} steps, "
                f"got {values.min()}..{values.max()}"
            )
    return lengths


def _keep_where_valid(
    new: Carry, y: jax.Array, carry: Carry, valid: jax.Array | None
) -> tuple[Carry, jax.Array]:
    """A step's `(new carry, y)` where `valid` `(B,)` or `(B, 1)`; the old carry and zeros
    elsewhere. `valid` is broadcast over each array's other axes (features, or a frame's)."""
    if valid is None:
        return new, y

    def where(keep, other):
        return jnp.where(valid.reshape(valid.shape[:1] + (1,) * (keep.ndim - 1)), keep, other)

    return jax.tree.map(where, new, carry), where(y, jnp.zeros_like(y))


def _time_major_mask(mask: jax.Array | None) -> jax.Array | None:
    return None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None]  # (T, B, 1)


def scan_steps(
    step: Callable[[CellParams, Carry, jax.Array], tuple[Carry, jax.Array]],
    params: CellParams,
    carry: Carry,
    inputs: jax.Array,
    mask: jax.Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
) -> tuple[Carry, jax.Array]:
    """Runs `step` over the time axis of `inputs` `(B, T, G)` (projected inputs, or raw ones for a
    step that projects them; or frames `(B, T, H, W, G)`); returns `(carry, (B, T, ...))`.

    With `mask` `(B, T)`, masked steps leave the carry unchanged and output zeros. `reverse` runs
    from the last step to the first; with right padding the padded steps come first and are skipped.
    """

    def masked_step(carry, inputs):
        x, valid = inputs  # (B, G), (B, 1) or None
        return _keep_where_valid(*step(params, carry, x), carry, valid)

    xs = (jnp.swapaxes(inputs, 0, 1), _time_major_mask(mask))  # scan runs over the leading axis
    carry, ys = jax.lax.scan(masked_step, carry, xs, reverse=reverse, unroll=unroll)
    return carry, jnp.swapaxes(ys, 0, 1)  # (B, T, H)


def hoist_input_projection() -> bool:
    """Whether layers project all timesteps before the scan (GPU, TPU) or in each step with a
    hand-written gradient (CPU); the math is the same, see the module docstring."""
    return jax.default_backend() != "cpu"


class _Cell(NamedTuple):
    """A cell's step after its two matmuls: `gates(x W + b, h U) -> pre-activations`, then
    `update(carry, pre-activations) -> (carry, y)`; `gates` is linear."""

    gates: Callable[[jax.Array, jax.Array], jax.Array]
    update: Callable[[Carry, jax.Array], tuple[Carry, jax.Array]]


_CELLS = {
    **{("rnn", name): _Cell(_sum_gates, update) for name, update in _RNN_UPDATES.items()},
    ("lstm", "tanh"): _Cell(_sum_gates, _lstm_update),
    ("gru", "tanh"): _Cell(_gru_gates, _gru_update),
}


def scan_cell(
    cell: str,
    params: CellParams,
    carry: Carry,
    x: jax.Array,
    mask: jax.Array | None = None,
    *,
    h_mask: jax.Array | None = None,
    reverse: bool = False,
    unroll: int = 1,
    activation: str = "tanh",
) -> tuple[Carry, jax.Array]:
    """`scan_steps(rnn_cell, lstm_cell or gru_cell, ...)` over raw inputs `x` `(B, T, F)`, with
    a hand-written gradient (see `_scan_cell_bwd`); 'gru' is the `reset_after` GRU. `h_mask`
    `(B, H)` is the recurrent dropout mask."""
    check_cell(cell, activation)
    if cell == "gru" and "recurrent_bias" not in params:
        raise ValueError("scan_cell's 'gru' is the reset_after GRU: params need 'recurrent_bias'")
    xs, valid = jnp.swapaxes(x, 0, 1), _time_major_mask(mask)
    step = _CELLS[cell, activation]
    carry, ys = _scan_cell(step, params, carry, xs, valid, h_mask, reverse, unroll)
    return carry, jnp.swapaxes(ys, 0, 1)


def _hidden(carry: Carry) -> jax.Array:
    return carry.h if isinstance(carry, LSTMState) else carry


def _cell_step(cell: _Cell, params, carry, x, valid, h_mask):
    """One masked step; also returns the step's pre-activations."""
    h_in = _hidden(carry) if h_mask is None else _hidden(carry) * h_mask
    if "recurrent_bias" in params:
        recurrent = project(h_in, params["recurrent_kernel"], params["recurrent_bias"])
    else:
        recurrent = h_in @ params["recurrent_kernel"]
    gates = cell.gates(project(x, params["kernel"], params["bias"]), recurrent)
    return *_keep_where_valid(*cell.update(carry, gates), carry, valid), gates


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6, 7))
def _scan_cell(cell, params, carry, xs, valid, h_mask, reverse, unroll):
    def step(carry, inputs):
        new, y, _ = _cell_step(cell, params, carry, *inputs, h_mask)
        return new, y

    return jax.lax.scan(step, carry, (xs, valid), reverse=reverse, unroll=unroll)


def _scan_cell_fwd(cell, params, carry, xs, valid, h_mask, reverse, unroll):
    def step(carry, inputs):
        new, y, gates = _cell_step(cell, params, carry, *inputs, h_mask)
        return new, (y, carry, gates)

    final, (ys, carries, gates) = jax.lax.scan(
        step, carry, (xs, valid), reverse=reverse, unroll=unroll
    )
    return (final, ys), (params, xs, valid, h_mask, carries, gates)


# The backward scan's `d_gates @ U.T` runs faster on CPU with `U.T` copied once before the loop
# up to this hidden size, and with the transpose folded into the dot above it. Measured in one
# process, medians of interleaved rounds (2026-12-05): seed LSTM (128, 2 CPU devices) 12.7 ->
# 11.6, 12.0 -> 11.8 and 13.3 -> 12.8 ms, the simple RNN 3.9 -> 3.6 ms, GRU 11.6 -> 11.3 ms,
# LSTM(256) 45.3 -> 44.6 ms; 2 x LSTM(512) 575 -> 593 ms and GRU(512) 496 -> 511 ms.
TRANSPOSED_WIDTH = 256


def _scan_cell_bwd(cell, reverse, unroll, residuals, cotangents):
    """The backward scan keeps only what each step needs (the carry's gradient through the
    pointwise update and `h U`) and emits the pre-activations' gradients; the weight gradients
    are then matmuls over all timesteps (one for both kernels of an LSTM or simple RNN). Autodiff
    of the scan instead accumulates each step's `(H, G)` weight gradient inside the loop:
    measured on a 2-core CPU, train step of 2 x LSTM(128) 21.7 -> 19.9 ms, GRU 19.6 -> 15.3 ms,
    2 x LSTM(512) 697 -> 622 ms.
    """
    params, xs, valid, h_mask, carries, gates = residuals
    d_final, d_ys = cotangents
    kernel, recurrent_kernel = params["kernel"], params["recurrent_kernel"]
    recurrent_kernel_t = recurrent_kernel.T  # XLA folds it into the dot: no copy
    if recurrent_kernel.shape[0] <= TRANSPOSED_WIDTH:
        recurrent_kernel_t = jax.lax.optimization_barrier(recurrent_kernel_t)  # one copy, kept
    projected = jnp.zeros(xs.shape[:-1] + kernel.shape[-1:], xs.dtype)  # (T, B, G), for shapes
    step_gates_transpose = jax.linear_transpose(cell.gates, projected[0], projected[0])

    def step(acc, inputs):
        d_carry, d_h_mask = acc
        carry, g, d_y, valid = inputs
        _, pullback = jax.vjp(
            lambda c, g: _keep_where_valid(*cell.update(c, g), c, valid), carry, g
        )
        d_carry, d_g = pullback((d_carry, d_y))
        d_h_in = step_gates_transpose(d_g)[1] @ recurrent_kernel_t
        if h_mask is not None:
            d_h_mask = d_h_mask + _hidden(carry) * d_h_in
            d_h_in = d_h_in * h_mask
        if isinstance(d_carry, LSTMState):
            d_carry = d_carry._replace(h=d_carry.h + d_h_in)
        else:
            d_carry = d_carry + d_h_in
        return (d_carry, d_h_mask), d_g

    d_h_mask = None if h_mask is None else jnp.zeros_like(h_mask)
    (d_carry, d_h_mask), d_gates = jax.lax.scan(
        step, (d_final, d_h_mask), (carries, gates, d_ys, valid), reverse=not reverse, unroll=unroll
    )
    d_projected, d_recurrent = jax.linear_transpose(cell.gates, projected, projected)(d_gates)
    h_in = _hidden(carries) if h_mask is None else _hidden(carries) * h_mask[None]
    if cell.gates is _sum_gates:
        # Both halves' gradients are d_gates: one matmul for both weights (the seed LSTM's train
        # step 13.2 -> 12.7 ms on 2 CPU devices, the simple RNN's 4.7 -> 4.3 ms).
        stacked = matmul_tn(jnp.concatenate([xs, h_in], axis=-1), d_gates)
        d_kernel, d_recurrent_kernel = jnp.split(stacked, [xs.shape[-1]])
    else:
        d_kernel, d_recurrent_kernel = matmul_tn(xs, d_projected), matmul_tn(h_in, d_recurrent)
    d_params = {
        "kernel": d_kernel,
        "recurrent_kernel": d_recurrent_kernel,
        "bias": d_projected.sum(axis=(0, 1)),
    }
    if "recurrent_bias" in params:
        d_params["recurrent_bias"] = d_recurrent.sum(axis=(0, 1))
    return d_params, d_carry, d_projected @ kernel.T, None, d_h_mask


_scan_cell.defvjp(_scan_cell_fwd, _scan_cell_bwd)


def _lstm_bias_init(key, shape, dtype=jnp.float32):
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(1.0)  # forget gate starts open


class Recurrent(nn.Module):
    """One simple RNN, LSTM or GRU layer over `(B, T, F)` inputs.

    Returns `(final_carry, outputs (B, T, H))`; `lengths` `(B,)` or `mask` `(B, T)` mark valid
    steps.
    Parameters are named as in the module docstring, so `variables["params"]` of this layer is
    exactly what `rnn_cell` / `lstm_cell` / `gru_cell` take. With `recurrent_dropout` and
    `train=True`, the per-sequence mask comes from the 'dropout' rng and is sown as
    `intermediates/recurrent_mask`.
    """

    cell: str
    hidden_size: int
    reverse: bool = False
    reset_after: bool = True
    unroll: int = 1
    recurrent_dropout: float = 0.0
    activation: str = "tanh"  # the simple RNN's: 'tanh' or 'relu'
    dtype: Any = None  # of the computation and the carry; None: promoted from inputs and params
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        lengths: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        initial_state: Carry | None = None,
        train: bool = False,
    ) -> tuple[Carry, jax.Array]:
        check_cell(self.cell, self.activation)
        if not 0.0 <= self.recurrent_dropout < 1.0:
            raise ValueError(f"recurrent_dropout must be in [0, 1), got {self.recurrent_dropout}")
        if x.ndim != 3:
            raise ValueError(f"recurrent layers take (batch, steps, features), got shape {x.shape}")
        batch, steps, features = x.shape
        width = GATES[self.cell] * self.hidden_size
        bias_init = _lstm_bias_init if self.cell == "lstm" else nn.initializers.zeros
        dtype = self.param_dtype
        params = {
            "kernel": self.param(
                "kernel", nn.initializers.glorot_uniform(), (features, width), dtype
            ),
            "recurrent_kernel": self.param(
                "recurrent_kernel", nn.initializers.orthogonal(), (self.hidden_size, width), dtype
            ),
            "bias": self.param("bias", bias_init, (width,), dtype),
        }
        if self.cell == "gru" and self.reset_after:
            params["recurrent_bias"] = self.param(
                "recurrent_bias", nn.initializers.zeros, (width,), dtype
            )
        x, *values = nn.dtypes.promote_dtype(x, *params.values(), dtype=self.dtype)
        params = dict(zip(params, values, strict=True))  # in the computation's dtype
        if lengths is not None and mask is not None:
            raise ValueError("pass lengths or mask, not both")
        if lengths is not None:
            mask = lengths_to_mask(check_lengths(lengths, batch, steps), steps)
        elif mask is not None and jnp.shape(mask) != (batch, steps):
            raise ValueError(f"mask must have shape ({batch}, {steps}), got {jnp.shape(mask)}")
        if initial_state is None:
            carry = initial_carry(self.cell, batch, self.hidden_size, x.dtype)
        else:  # the scan's carry keeps one dtype: the computation's
            carry = jax.tree.map(lambda a: jnp.asarray(a, x.dtype), initial_state)
        h_mask = None
        if train and self.recurrent_dropout:
            h_mask = dropout_mask(
                self.make_rng("dropout"), (batch, self.hidden_size), self.recurrent_dropout, x.dtype
            )  # (B, H): one mask per sequence, the same at every step
            self.sow("intermediates", "recurrent_mask", h_mask)
        if hoist_input_projection():
            if self.cell == "rnn":
                step = functools.partial(rnn_step, activation=self.activation, h_mask=h_mask)
            elif self.cell == "lstm":
                step = functools.partial(lstm_step, h_mask=h_mask)
            else:
                step = functools.partial(gru_step, reset_after=self.reset_after, h_mask=h_mask)
            inputs = project(x, params["kernel"], params["bias"])
            return scan_steps(
                step, params, carry, inputs, mask, reverse=self.reverse, unroll=self.unroll
            )
        if not runtime.using_hand_written_gradients() or (
            self.cell == "gru" and not self.reset_after
        ):
            if self.cell == "rnn":
                step = functools.partial(rnn_cell, activation=self.activation, h_mask=h_mask)
            elif self.cell == "lstm":
                step = functools.partial(lstm_cell, h_mask=h_mask)
            else:
                step = functools.partial(gru_cell, reset_after=self.reset_after, h_mask=h_mask)
            return scan_steps(
                step, params, carry, x, mask, reverse=self.reverse, unroll=self.unroll
            )
        return scan_cell(
            self.cell,
            params,
            carry,
            x,
            mask,
            h_mask=h_mask,
            reverse=self.reverse,
            unroll=self.unroll,
            activation=self.activation,
        )


class StackedRNN(nn.Module):
    """Stacked (optionally bidirectional) simple RNN, LSTM or GRU layers over `(B, T, F)`.

    Returns `(outputs, final_states)`: `outputs` is `(B, T, D)` with `return_sequences`, else the
    last valid step's hidden state `(B, D)` (for a bidirectional layer, the forward state at the
    last valid step concatenated with the backward state at step 0, as Keras and PyTorch do);
    D is the last hidden size, doubled when bidirectional. `final_states` holds one carry per layer,
    a `(forward, backward)` pair per layer when bidirectional.

    `implementation="cudnn"` (default "scan") runs an LSTM stack as one call of cuDNN's fused
    kernel, with the same params: see `zoo.layers.cudnn` for what it needs. Asked for on a
    configuration or a machine it cannot run on, it raises instead of falling back to the scan.
    """

    cell: str
    hidden_sizes: Sequence[int]
    bidirectional: bool = False
    return_sequences: bool = False
    reset_after: bool = True
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    unroll: int = 1
    activation: str = "tanh"  # the simple RNN's
    dtype: Any = None
    param_dtype: Any = jnp.float32
    implementation: str = "scan"  # or "cudnn", LSTM on CUDA only

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        lengths: jax.Array | None = None,
        *,
        initial_states: Sequence[Carry] | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, list[Carry]]:
        if initial_states is not None and len(initial_states) != len(self.hidden_sizes):
            raise ValueError(
                f"initial_states needs one state per layer ({len(self.hidden_sizes)}), "
                f"got {len(initial_states)}"
            )
        check_implementation(
            self.implementation, self.cell, self.hidden_sizes, self.recurrent_dropout
        )
        if self.implementation == "cudnn":
            h, states = self._fused_lstm(x, lengths, initial_states, train)
            if self.return_sequences:
                return h, states
            return _final_hidden(states[-1], self.cell, self.bidirectional), states
        states, h = [], x
        for i, hidden in enumerate(self.hidden_sizes):
            if i and self.dropout:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            init = None if initial_states is None else initial_states[i]
            options = {
                "reset_after": self.reset_after,
                "unroll": self.unroll,
                "recurrent_dropout": self.recurrent_dropout,
                "activation": self.activation,
                "dtype": self.dtype,
                "param_dtype": self.param_dtype,
            }
            if self.bidirectional:
                init = (None, None) if init is None else init
                forward = Recurrent(self.cell, hidden, name=f"layer_{i}_forward", **options)
                backward = Recurrent(
                    self.cell, hidden, reverse=True, name=f"layer_{i}_backward", **options
                )
                fwd_state, fwd = forward(h, lengths, initial_state=init[0], train=train)
                bwd_state, bwd = backward(h, lengths, initial_state=init[1], train=train)
                states.append((fwd_state, bwd_state))
                h = jnp.concatenate([fwd, bwd], axis=-1)  # (B, T, 2H)
            else:
                layer = Recurrent(self.cell, hidden, name=f"layer_{i}", **options)
                state, h = layer(h, lengths, initial_state=init, train=train)
                states.append(state)
        if self.return_sequences:
            return h, states
        return _final_hidden(states[-1], self.cell, self.bidirectional), states

    def _fused_lstm(
        self,
        x: jax.Array,
        lengths: jax.Array | None,
        initial_states: Sequence[Carry] | None,
        train: bool,
    ) -> tuple[jax.Array, list[Carry]]:
        """The stack as one `zoo.layers.cudnn.stacked_lstm` call, over params declared under the
        scan's names, shapes and initializers (`_LSTMWeights`)."""
        from zoo.layers import cudnn  # here: cudnn.py builds on this module

        if train and self.dropout and len(self.hidden_sizes) > 1:
            raise ValueError(
                f"implementation='cudnn' cannot apply dropout={self.dropout} between layers in "
                "training (cuDNN draws its own masks, not Flax's); use implementation='scan', or "
                "dropout=0"
            )
        directions = ("_forward", "_backward") if self.bidirectional else ("",)
        params, features = {}, x.shape[-1]
        for i, hidden in enumerate(self.hidden_sizes):
            for direction in directions:
                name = f"layer_{i}{direction}"
                params[name] = _LSTMWeights(hidden, self.param_dtype, name=name)(features)
            features = hidden * len(directions)
        leaves, tree = jax.tree.flatten(params)
        x, *leaves = nn.dtypes.promote_dtype(x, *leaves, dtype=self.dtype)  # as the scan computes
        params = jax.tree.unflatten(tree, leaves)
        return cudnn.stacked_lstm(params, x, lengths, initial_states=initial_states)


class _LSTMWeights(nn.Module):
    """One LSTM layer's params, declared as `Recurrent` declares them (names, shapes,
    initializers, order), so the cuDNN path's params and their initial values are the scan's."""

    hidden_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: int) -> CellParams:
        width, dtype = 4 * self.hidden_size, self.param_dtype
        return {
            "kernel": self.param(
                "kernel", nn.initializers.glorot_uniform(), (features, width), dtype
            ),
            "recurrent_kernel": self.param(
                "recurrent_kernel", nn.initializers.orthogonal(), (self.hidden_size, width), dtype
            ),
            "bias": self.param("bias", _lstm_bias_init, (width,), dtype),
        }


def _final_hidden(state: Any, cell: str, bidirectional: bool) -> jax.Array:
    hidden = lambda s: s.h if cell == "lstm" else s  # noqa: E731
    if bidirectional:
        return jnp.concatenate([hidden(state[0]), hidden(state[1])], axis=-1)
    return hidden(state)
