"""Import PyTorch, Keras and Flax weights as zoo params.

Recurrent: `from_torch` (`nn.RNN`/`nn.LSTM`/`nn.GRU`) and `from_keras` (`SimpleRNN`/`LSTM`/`GRU`)
give the `params` of
a `StackedRNN` with the same cell, layer count and direction(s): `{"layer_0": {...}, ...}` or
`{"layer_0_forward": ..., "layer_0_backward": ...}`; `from_flax_cell` converts one Flax
`nn.OptimizedLSTMCell` / `nn.LSTMCell` / `nn.GRUCell` to one such layer.

Convolutional: `conv_from_torch` and `dense_from_torch` convert one `nn.Conv2d`/`nn.Conv1d` or
`nn.Linear` to the params of a zoo `Conv` / `nn.Dense` (Keras' `Conv2D` and `Dense` weights are
already in zoo's layout: `kernel (*window, in, out)`, `bias`); `cnn_from_torch` converts a whole
PyTorch seed CNN (`zoo.models.create("cnn")`'s layers) with them.

All take plain arrays (anything `np.asarray` accepts: CPU tensors, Keras variables), so zoo never
imports torch or keras. `read_state_dict` reads a PyTorch state dict saved as safetensors, so the
same importers take a file; pickled checkpoints (`.pt`, `.pth`) are refused, never unpickled.
"""

import os
import re
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
    """Converts a PyTorch `nn.RNN` / `nn.LSTM` / `nn.GRU` `state_dict()` (batch_first or not:
    same weights; an `nn.RNN`'s `nonlinearity` is the model's `activation`).

    PyTorch keeps `W_ih (G*H, F)`, `W_hh (G*H, H)` and two biases in zoo's gate order; RNN and
    LSTM biases are summed, GRU's hidden bias becomes `recurrent_bias` (PyTorch's GRU is
    `reset_after=True`).
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
        if cell != "gru":
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
    """Converts Keras `SimpleRNN`/`LSTM`/`GRU` weights: one `layer.get_weights()` list per stacked
    layer.

    For a `Bidirectional` layer, its `get_weights()` (forward weights, then backward). Keras'
    SimpleRNN and LSTM layouts are zoo's; Keras' GRU gates `z, r, h` are reordered to `r, z, n`,
    and with `reset_after` its `(2, 3H)` bias splits into `bias` and `recurrent_bias`.
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
    if cell != "gru":
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
    return _array(state_dict[key])


def _check_gates(width: int, cell: str, hidden: int, what: str) -> None:
    if width != GATES[cell] * hidden:
        raise ValueError(
            f"{what}: {width} gate rows do not fit a {cell.upper()} of hidden size {hidden} "
            f"(expected {GATES[cell]} x {hidden}); is this the right cell type?"
        )


def from_flax_cell(params: Mapping[str, Any], cell: str) -> dict[str, np.ndarray]:
    """Converts the params of one Flax `nn.SimpleCell` (`cell='rnn'`: dense layers `i` with a
    bias on the input, `h` on the carry; not `residual=True`), `nn.OptimizedLSTMCell` or
    `nn.LSTMCell` (`cell='lstm'`: `ii, if, ig, io` on the input, `hi, hf, hg, ho` with biases on
    the carry) or `nn.GRUCell` (`cell='gru'`: `ir, iz, in` with biases, `hr, hz`, and `hn` with a
    bias) to one zoo layer. Flax's GRU applies the reset gate after `h U_n + b_n`: zoo's
    `reset_after=True`."""
    check_cell(cell)
    gates = {"rnn": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}[cell]
    missing = [f"{side}{g}" for side in "ih" for g in gates if f"{side}{g}" not in params]
    if missing:
        raise ValueError(
            f"Flax {cell.upper()} cell params lack {missing}; found {sorted(params)}: "
            f"is this the right cell type?"
        )

    def dense(name: str, part: str) -> np.ndarray:
        layer = params[name]
        if part == "bias" and "bias" not in layer:
            return np.zeros(np.shape(layer["kernel"])[-1], np.float32)
        return np.asarray(layer[part], np.float32)

    def stack(side: str, part: str) -> np.ndarray:
        return np.concatenate([dense(side + g, part) for g in gates], axis=-1)

    layer = {"kernel": stack("i", "kernel"), "recurrent_kernel": stack("h", "kernel")}
    if cell != "gru":  # one of the two dense layers has a bias
        layer["bias"] = stack("i", "bias") + stack("h", "bias")
    else:
        layer["bias"], layer["recurrent_bias"] = stack("i", "bias"), stack("h", "bias")
    return layer


def conv_from_torch(weight: Any, bias: Any | None = None) -> dict[str, np.ndarray]:
    """PyTorch `nn.Conv1d`/`nn.Conv2d` weights `(out, in, *window)` (and bias) as the params of a
    zoo `Conv` (or `nn.Conv`): `kernel (*window, in, out)`."""
    weight = _array(weight)
    if weight.ndim < 3:
        raise ValueError(f"a PyTorch conv weight is (out, in, *window); got shape {weight.shape}")
    params = {"kernel": np.moveaxis(weight, (0, 1), (-1, -2))}
    if bias is not None:
        params["bias"] = _array(bias)
    return params


def dense_from_torch(
    weight: Any, bias: Any | None = None, *, flattened_from: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """PyTorch `nn.Linear` weights `(out, in)` (and bias) as `nn.Dense` params: `kernel (in, out)`.

    `flattened_from=(C, *spatial)`: the layer reads a channels-first feature map flattened by
    PyTorch (`nn.Flatten` of NCHW), while zoo flattens channels-last maps; its input rows are
    reordered to match."""
    weight = _array(weight)
    kernel = weight.T
    if flattened_from is not None:
        channels, *spatial = flattened_from
        if channels * int(np.prod(spatial)) != kernel.shape[0]:
            raise ValueError(
                f"flattened_from {tuple(flattened_from)} has {channels * int(np.prod(spatial))} "
                f"features; the Linear weight {weight.shape} takes {kernel.shape[0]}"
            )
        rows = kernel.reshape(channels, *spatial, -1)
        kernel = np.moveaxis(rows, 0, -2).reshape(kernel.shape)
    params = {"kernel": kernel}
    if bias is not None:
        params["bias"] = _array(bias)
    return params


def cnn_from_torch(
    state_dict: Mapping[str, Any], input_shape: Sequence[int] = (28, 28, 1)
) -> dict[str, dict[str, np.ndarray]]:
    """The `params` of `zoo.models.create("cnn", input_shape=...)` from the `state_dict` of the
    same network in PyTorch: three `nn.Conv2d` then two `nn.Linear` (after `nn.Flatten` of NCHW
    maps), taken in the state dict's order whatever their names."""
    weights = [(key, value) for key, value in state_dict.items() if key.endswith("weight")]
    shapes = [tuple(_array(value).shape) for _, value in weights]
    if [len(shape) for shape in shapes] != [4, 4, 4, 2, 2]:
        raise ValueError(
            "the seed CNN has three Conv2d then two Linear layers (weights of rank 4, 4, 4, 2, 2); "
            f"the state dict's weights have shapes {shapes}"
        )
    spatial = [(size - 2) // 2 for size in input_shape[:2]]  # conv 3x3, pool 2
    spatial = [(size - 2) // 2 - 2 for size in spatial]  # conv, pool, conv
    layers = []
    for key, _ in weights:
        bias = state_dict.get(key[: -len("weight")] + "bias")
        layers.append((state_dict[key], bias))
    params = {f"Conv_{i}": conv_from_torch(*layers[i]) for i in range(3)}
    channels = shapes[2][0]
    params["Dense_0"] = dense_from_torch(*layers[3], flattened_from=(channels, *spatial))
    params["Dense_1"] = dense_from_torch(*layers[4])
    return params


def keras_weights(model: Any) -> dict[str, list[np.ndarray]]:
    """`{layer name: layer.get_weights()}` of a Keras model, the layers that have weights: what
    the Keras importers of the CNN families read."""
    return {
        layer.name: [np.asarray(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.get_weights()
    }


class Variables(dict):
    """`{"params": ..., "batch_stats": ...}` built one module path at a time."""

    def put(self, collection: str, path: str, leaves: Mapping[str, np.ndarray]) -> None:
        node = self.setdefault(collection, {})
        for part in path.split("/"):
            node = node.setdefault(part, {})
        node.update(leaves)


def put_keras_conv_norm(
    variables: Variables,
    path: str,
    conv: Sequence[np.ndarray],
    norm: Sequence[np.ndarray] | None = None,
    *,
    depthwise: bool = False,
) -> None:
    """A Keras `Conv2D` (or `DepthwiseConv2D`) and its `BatchNormalization` as zoo's `ConvNorm`
    at `path`: kernels are `(kh, kw, in, out)` in both; a depthwise kernel
    `(kh, kw, channels, 1)` becomes a grouped one, `(kh, kw, 1, channels)`."""
    kernel = np.asarray(conv[0])
    if depthwise:
        if kernel.shape[-1] != 1:
            raise ValueError(f"depth_multiplier 1 expected, got depthwise kernel {kernel.shape}")
        kernel = np.swapaxes(kernel, -1, -2)
    leaves = {"kernel": kernel}
    if len(conv) > 1:
        leaves["bias"] = np.asarray(conv[1])
    variables.put("params", f"{path}/conv", leaves)
    if norm is not None:
        gamma, beta, mean, var = (np.asarray(w) for w in norm)
        variables.put("params", f"{path}/bn", {"scale": gamma, "bias": beta})
        variables.put("batch_stats", f"{path}/bn", {"mean": mean, "var": var})


def put_torch_conv_norm(
    variables: Variables, path: str, state_dict: Mapping[str, Any], conv: str, norm: str | None
) -> None:
    """PyTorch `Conv2d` `conv` and `BatchNorm2d` `norm` (state-dict prefixes) as zoo's `ConvNorm`
    at `path`."""
    variables.put(
        "params",
        f"{path}/conv",
        conv_from_torch(_get(state_dict, f"{conv}.weight"), state_dict.get(f"{conv}.bias")),
    )
    if norm is not None:
        scale, bias = _get(state_dict, f"{norm}.weight"), _get(state_dict, f"{norm}.bias")
        mean, var = (
            _get(state_dict, f"{norm}.running_mean"),
            _get(state_dict, f"{norm}.running_var"),
        )
        variables.put("params", f"{path}/bn", {"scale": scale, "bias": bias})
        variables.put("batch_stats", f"{path}/bn", {"mean": mean, "var": var})


PICKLED = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch `state_dict` saved with `safetensors.torch.save_file(model.state_dict(), path)`,
    in the order the module lists its layers ('2.weight' before '10.weight')."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if path.endswith(PICKLED):
        raise ValueError(
            f"refusing {path}: zoo never unpickles. Save the state dict as safetensors instead: "
            "`from safetensors.torch import save_file; save_file(model.state_dict(), "
            "'model.safetensors')`"
        )
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"cannot read {path} as safetensors: {error}") from None
    return {key: tensors[key] for key in sorted(tensors, key=_natural)}


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _array(value: Any) -> np.ndarray:
    value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    return np.asarray(value, np.float32)
