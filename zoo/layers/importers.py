"""Import PyTorch `nn.LSTM`/`nn.GRU` and Keras `LSTM`/`GRU` weights as `StackedRNN` params.

Both take plain arrays (anything `np.asarray` accepts: CPU tensors, Keras variables), so zoo never
imports torch or keras. The results are the `params` collection of a `StackedRNN` with the same
cell, layer count and direction(s): `{"layer_0": {...}, ...}` or `{"layer_0_forward": ...,
"layer_0_backward": ...}`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zoo.layers.recurrent import GATES, check_cell


def _layer_names(num_layers: int, bidirectional: bool) -> list[tuple[str, str]]:
    """(zoo name, PyTorch suffix) per layer and direction."""
    names = []
    for k in range(num_layers):
        if bidirectional:
            names += [(f"layer_{k}_forward", f"_l{k}"), (f"layer_{k}_backward", f"_l{k}_reverse")]
        else:
            names.append((f"layer_{k}", f"_l{k}"))
    return names


def from_torch(state_dict: Mapping[str, Any], cell: str) -> dict[str, dict[str, np.ndarray]]:
    """Converts a PyTorch `nn.LSTM` / `nn.GRU` `state_dict()` (batch_first or not: same weights).

    PyTorch keeps `W_ih (G*H, F)`, `W_hh (G*H, H)` and two biases in zoo's gate order; LSTM biases
    are summed, GRU's hidden bias becomes `recurrent_bias` (PyTorch's GRU is `reset_after=True`).
    """
    check_cell(cell)
    if any("weight_hr" in key for key in state_dict):
        raise ValueError("LSTMs with proj_size are not supported")
    num_layers = 1 + max(int(key.split("_l")[1].split("_")[0]) for key in state_dict)
    bidirectional = any(key.endswith("_reverse") for key in state_dict)
    params = {}
    for name, suffix in _layer_names(num_layers, bidirectional):
        get = lambda key, s=suffix: _get(state_dict, key + s)  # noqa: E731
        w_ih, w_hh = get("weight_ih"), get("weight_hh")
        _check_gates(w_ih.shape[0], cell, w_hh.shape[1], "weight_ih" + suffix)
        layer = {"kernel": w_ih.T, "recurrent_kernel": w_hh.T}
        b_ih, b_hh = get("bias_ih"), get("bias_hh")
        if cell == "lstm":
            layer["bias"] = b_ih + b_hh
        else:
            layer["bias"], layer["recurrent_bias"] = b_ih, b_hh
        params[name] = layer
    return params


def from_keras(
    layer_weights: Sequence[Sequence[Any]],
    cell: str,
    *,
    bidirectional: bool = False,
    reset_after: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Converts Keras `LSTM`/`GRU` weights: one `layer.get_weights()` list per stacked layer.

    For a `Bidirectional` layer, its `get_weights()` (forward weights, then backward). Keras' LSTM
    layout is zoo's; Keras' GRU gates `z, r, h` are reordered to `r, z, n`, and with `reset_after`
    its `(2, 3H)` bias splits into `bias` and `recurrent_bias`.
    """
    check_cell(cell)
    per_direction = 3
    params = {}
    names = _layer_names(len(layer_weights), bidirectional)
    directions = 2 if bidirectional else 1
    for k, weights in enumerate(layer_weights):
        weights = [np.asarray(w, np.float32) for w in weights]
        if len(weights) != per_direction * directions:
            each = " for each direction" if bidirectional else ""
            raise ValueError(
                f"Keras layer {k}: expected {per_direction * directions} weight arrays "
                f"(kernel, recurrent_kernel, bias{each}), got {len(weights)}"
            )
        for d in range(directions):
            kernel, recurrent, bias = weights[d * per_direction : (d + 1) * per_direction]
            _check_gates(kernel.shape[1], cell, recurrent.shape[0], f"layer {k} kernel")
            name = names[k * directions + d][0]
            params[name] = _keras_direction(kernel, recurrent, bias, cell, reset_after)
    return params


def _keras_direction(
    kernel, recurrent, bias, cell: str, reset_after: bool
) -> dict[str, np.ndarray]:
    if cell == "lstm":
        return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": bias}
    expected_bias = (2, kernel.shape[1]) if reset_after else (kernel.shape[1],)
    if bias.shape != expected_bias:
        raise ValueError(
            f"Keras GRU bias has shape {bias.shape}; "
            f"reset_after={reset_after} expects {expected_bias}"
        )
    order = _keras_gru_gates_to_zoo
    layer = {"kernel": order(kernel), "recurrent_kernel": order(recurrent)}
    if reset_after:
        layer["bias"], layer["recurrent_bias"] = order(bias[0]), order(bias[1])
    else:
        layer["bias"] = order(bias)
    return layer


def _keras_gru_gates_to_zoo(w: np.ndarray) -> np.ndarray:
    z, r, h = np.split(w, 3, axis=-1)
    return np.concatenate([r, z, h], axis=-1)


def _get(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in state_dict:
        raise ValueError(f"PyTorch state_dict lacks {key!r}; found {sorted(state_dict)}")
    value = state_dict[key]
    value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    return np.asarray(value, np.float32)


def _check_gates(width: int, cell: str, hidden: int, what: str) -> None:
    if width != GATES[cell] * hidden:
        raise ValueError(
            f"{what}: {width} gate rows do not fit a {cell.upper()} of hidden size {hidden} "
            f"(expected {GATES[cell]} x {hidden}); is this the right cell type?"
        )
