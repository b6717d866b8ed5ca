"""cuDNN's fused LSTM (`jax.experimental.rnn`) over zoo's LSTM params: the opt-in
`StackedRNN(..., implementation="cudnn")`, off by default.

zoo's default path scans its own cell (`zoo.layers.recurrent`). On a CUDA GPU cuDNN runs a whole
stack of LSTM layers, both directions and the padding included, as one fused kernel. This path
has never run on a GPU in this project: on CPU the tests check the weight layout, the padding and
the states through `rnn.lstm_ref`, JAX's pure-jnp reference of the same kernel and layout; the
kernel's own parity tests (outputs and gradients against the scan) run on a CUDA GPU only, from
`benchmarks/device_check.sh`.

Weight layout. cuDNN takes one flat float32 vector: `W_ih (4H, F_in)` then `W_hh (4H, H)` for
each pseudo-layer in turn (layer 0 forward, layer 0 backward, layer 1 forward, ...), then `b_ih
(4H,)` and `b_hh (4H,)` for each; `F_in` is the input size for layer 0 and `D * H` above it
(D = 2 directions when bidirectional). Both use the gate order `i, f, g, o` (PyTorch's, whose
LSTM is cuDNN's). zoo's `kernel` is `W_ih.T`, `recurrent_kernel` is `W_hh.T` and `bias` is
`b_ih + b_hh`: packing puts zoo's bias in `b_ih` and zeros in `b_hh`, so the gradient of `bias`
is that of `b_ih`.

What it needs, each refused with an error naming the problem:
- an LSTM, one hidden size for every layer, no recurrent dropout (cuDNN has none), and no dropout
  between layers in training (cuDNN would draw its own masks, not Flax's);
- float32 computation: float32 inputs and params, `dtype` None or float32;
- right-padded sequences marked by `lengths`, each at least one step long (`StackedRNN` takes no
  mask, so left padding cannot reach it);
- a CUDA GPU as JAX's default backend.

Where it cannot run it raises instead of falling back to the scan: the user asked for it by name,
and a run that silently scans would report a speed or a benchmark for the wrong kernel; leaving
the option at its default is the fallback. When it runs it logs that choice once per
configuration (logger `zoo.layers.cudnn`, at WARNING: the path is experimental).

`jax.grad`, `jax.vjp` and `jax.jit` work through it; forward mode (`jax.jvp`, `jacfwd`) does not,
as `rnn.lstm` is a `jax.custom_vjp`, and `unroll` does not apply.
"""

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.experimental import rnn

from zoo.layers.recurrent import LSTMState, check_lengths, lengths_to_mask

Params = Mapping[str, Mapping[str, jax.Array]]  # StackedRNN's: {"layer_0": {"kernel": ...}, ...}
KERNELS = ("cudnn", "reference")  # rnn.lstm (CUDA only), rnn.lstm_ref (any backend)

logger = logging.getLogger(__name__)


def layer_shapes(
    input_size: int, hidden_size: int, num_layers: int, bidirectional: bool
) -> dict[str, dict[str, tuple[int, ...]]]:
    """A `StackedRNN` LSTM's param shapes per layer, its layers in cuDNN's pseudo-layer order
    (forward, then backward, layer by layer)."""
    directions = ("_forward", "_backward") if bidirectional else ("",)
    gates = 4 * hidden_size
    shapes = {}
    for k in range(num_layers):
        features = input_size if k == 0 else len(directions) * hidden_size
        for direction in directions:
            shapes[f"layer_{k}{direction}"] = {
                "kernel": (features, gates),
                "recurrent_kernel": (hidden_size, gates),
                "bias": (gates,),
            }
    return shapes


def _check_params(params: Params, expected: dict[str, dict[str, tuple[int, ...]]]) -> None:
    if set(params) != set(expected):
        raise ValueError(
            f"params have layers {sorted(params)}; this LSTM stack has {sorted(expected)}"
        )
    for name, shapes in expected.items():
        found = {leaf: tuple(np.shape(value)) for leaf, value in params[name].items()}
        if found != shapes:
            raise ValueError(
                f"params[{name!r}] has shapes {found}; an LSTM layer here has {shapes} "
                "(is this an LSTM's, with these sizes?)"
            )


def pack_lstm_weights(
    params: Params, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool
) -> jax.Array:
    """A `StackedRNN` LSTM's params as cuDNN's flat weights `(rnn.get_num_params_in_lstm(...),)`.

    A concatenation of transposes, so gradients flow back to zoo's params.

    Raises:
      ValueError: for a missing or extra layer, or a param of another shape (a GRU's, say).
    """
    expected = layer_shapes(input_size, hidden_size, num_layers, bidirectional)
    _check_params(params, expected)
    layers = [params[name] for name in expected]
    matrices = [w for p in layers for w in (p["kernel"].T, p["recurrent_kernel"].T)]
    biases = [b for p in layers for b in (p["bias"], jnp.zeros_like(p["bias"]))]
    return jnp.concatenate([jnp.ravel(w) for w in matrices + biases])


def params_from_lstm_weights(
    weights: jax.Array, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool
) -> dict[str, dict[str, jax.Array]]:
    """cuDNN's flat LSTM weights as `StackedRNN` params (the inverse of `pack_lstm_weights`),
    read with JAX's own `rnn.unpack_lstm_weights`; the two biases are summed."""
    size = rnn.get_num_params_in_lstm(input_size, hidden_size, num_layers, bidirectional)
    if jnp.shape(weights) != (size,):
        raise ValueError(
            f"this LSTM stack has {size} cuDNN weights, got shape {jnp.shape(weights)}"
        )
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
        weights, input_size, hidden_size, num_layers, bidirectional
    )
    names = layer_shapes(input_size, hidden_size, num_layers, bidirectional)
    return {
        name: {"kernel": w_ih[i].T, "recurrent_kernel": w_hh[i].T, "bias": b_ih[i] + b_hh[i]}
        for i, name in enumerate(names)
    }


def on_cuda() -> bool:
    """Whether JAX's default backend is a CUDA GPU, which cuDNN needs (a ROCm GPU is 'gpu' too;
    JAX's own tests tell them apart by the platform version)."""
    if jax.default_backend() != "gpu":
        return False
    return "cuda" in jax.extend.backend.get_backend().platform_version.lower()


def _require_cuda() -> None:
    if not on_cuda():
        version = jax.extend.backend.get_backend().platform_version
        raise ValueError(
            f"implementation='cudnn' needs a CUDA GPU (cuDNN's LSTM); JAX's default backend is "
            f"{jax.default_backend()!r} ({version}). Use implementation='scan', the default, here"
        )


@functools.cache
def _log_once(message: str) -> None:
    logger.warning(message)


def _structure(params: Params) -> tuple[int, int, bool]:
    """`(hidden_size, num_layers, bidirectional)` of a `StackedRNN` LSTM's params, from their
    names and the first layer's shapes (`pack_lstm_weights` checks the rest)."""
    bidirectional = "layer_0_forward" in params
    first = "layer_0_forward" if bidirectional else "layer_0"
    if first not in params:
        raise ValueError(
            f"params are not a StackedRNN's: no 'layer_0' or 'layer_0_forward' in {sorted(params)}"
        )
    hidden_size = np.shape(params[first]["recurrent_kernel"])[0]
    return hidden_size, len(params) // (2 if bidirectional else 1), bidirectional


def _check_float32(x: jax.Array, params: Params) -> None:
    found = {jnp.dtype(x.dtype), *(jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(params))}
    if found != {jnp.dtype(jnp.float32)}:
        names = ", ".join(sorted(str(dtype) for dtype in found))
        raise ValueError(
            f"implementation='cudnn' computes in float32 only (jax.experimental.rnn's LSTM), got "
            f"{names}; use float32 (dtype=None or jnp.float32) or implementation='scan'"
        )


def _sequence_lengths(lengths: Any, batch: int, steps: int) -> jax.Array:
    """`(B,)` int32 lengths for cuDNN, all `steps` when None; refuses (when concrete) a sequence
    of no steps, whose final state cuDNN's reference gets wrong (it reads step -1)."""
    if lengths is None:
        return jnp.full((batch,), steps, jnp.int32)
    lengths = check_lengths(lengths, batch, steps)
    if not isinstance(lengths, jax.core.Tracer) and lengths.size and int(lengths.min()) < 1:
        raise ValueError(
            "implementation='cudnn' needs every sequence to have at least one step, got "
            f"lengths {np.asarray(lengths).tolist()}; use implementation='scan' for empty ones"
        )
    return lengths.astype(jnp.int32)


def _initial_stack(
    initial_states: Sequence[Any] | None,
    num_layers: int,
    bidirectional: bool,
    batch: int,
    hidden_size: int,
) -> tuple[jax.Array, jax.Array]:
    """`StackedRNN`'s `initial_states` (one `LSTMState` per layer, a `(forward, backward)` pair
    when bidirectional; None for zeros) as cuDNN's `h_0, c_0`, each `(L * D, B, H)`."""
    if initial_states is None:
        initial_states = [None] * num_layers
    if len(initial_states) != num_layers:
        raise ValueError(
            f"initial_states needs one state per layer ({num_layers}), got {len(initial_states)}"
        )
    zeros = jnp.zeros((batch, hidden_size), jnp.float32)
    states = []
    for state in initial_states:
        pair = (None, None) if state is None and bidirectional else state
        states += list(pair) if bidirectional else [state]
    states = [LSTMState(zeros, zeros) if s is None else LSTMState(*s) for s in states]
    for state in states:
        for part in state:
            if jnp.shape(part) != (batch, hidden_size):
                raise ValueError(
                    f"an initial state is (batch, hidden) = ({batch}, {hidden_size}), "
                    f"got {jnp.shape(part)}"
                )
    h_0 = jnp.stack([jnp.asarray(s.h, jnp.float32) for s in states])  # (L * D, B, H)
    c_0 = jnp.stack([jnp.asarray(s.c, jnp.float32) for s in states])
    return h_0, c_0


def stacked_lstm(
    params: Params,
    x: jax.Array,
    lengths: jax.Array | None = None,
    *,
    initial_states: Sequence[Any] | None = None,
    kernel: str = "cudnn",
    precision: jax.lax.PrecisionLike = None,
) -> tuple[jax.Array, list[Any]]:
    """A `StackedRNN` LSTM over `x` `(B, T, F)` as one call of cuDNN's fused LSTM.

    Args:
      params: a `StackedRNN` LSTM's params: `layer_{k}`, or `layer_{k}_forward` and
        `layer_{k}_backward` when bidirectional; one hidden size H for every layer.
      x: `(B, T, F)` float32 inputs.
      lengths: `(B,)` ints in `[1, T]`: right-padded sequences; None: all of them `T` steps.
      initial_states: as `StackedRNN` takes them; None (or a None entry) for zeros.
      kernel: 'cudnn' (`rnn.lstm`, CUDA only) or 'reference' (`rnn.lstm_ref`, JAX's pure-jnp
        version of the same kernel and weights, any backend: the CPU tests' check).
      precision: of cuDNN's matmuls; None follows `jax_default_matmul_precision` (TF32 on GPU
        unless that is 'highest').

    Returns:
      `(outputs, states)` as `StackedRNN(..., return_sequences=True)` returns them: outputs
      `(B, T, D * H)`, zero past each sequence's end; one `LSTMState` per layer, a
      `(forward, backward)` pair when bidirectional (forward at the last valid step, backward
      at step 0).

    Raises:
      ValueError: for an input cuDNN's LSTM cannot take (see the module docstring), or
        kernel='cudnn' away from a CUDA GPU.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from: {', '.join(KERNELS)}")
    if x.ndim != 3:
        raise ValueError(f"recurrent layers take (batch, steps, features), got shape {x.shape}")
    batch, steps, input_size = x.shape
    hidden_size, num_layers, bidirectional = _structure(params)
    weights = pack_lstm_weights(params, input_size, hidden_size, num_layers, bidirectional)
    _check_float32(x, params)
    seq_lengths = _sequence_lengths(lengths, batch, steps)
    h_0, c_0 = _initial_stack(initial_states, num_layers, bidirectional, batch, hidden_size)
    sizes = (input_size, hidden_size, num_layers, 0.0, bidirectional)  # 0.0: no dropout
    if kernel == "cudnn":
        _require_cuda()
        _log_once(
            f"StackedRNN implementation='cudnn': cuDNN's fused LSTM (jax.experimental.rnn) runs "
            f"{num_layers} layer(s) of {hidden_size}, bidirectional={bidirectional}, instead of "
            "zoo's scan (experimental)"
        )
        y, h_n, c_n = rnn.lstm(x, h_0, c_0, weights, seq_lengths, *sizes, precision)
    else:
        unpacked = rnn.unpack_lstm_weights(weights, *sizes[:3], bidirectional)
        y, h_n, c_n = rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, *sizes)
    if lengths is not None:  # zoo's contract; jax does not document cuDNN's padding fill
        valid = lengths_to_mask(seq_lengths, steps)[..., None]  # (B, T, 1)
        y = jnp.where(valid, y, jnp.zeros_like(y))
    states = [LSTMState(h, c) for h, c in zip(h_n, c_n, strict=True)]  # one per pseudo-layer
    if bidirectional:
        states = [(states[2 * k], states[2 * k + 1]) for k in range(num_layers)]
    return y, states
