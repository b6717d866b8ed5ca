"""Reading the weight files `zoo.load_weights` takes, into NumPy arrays: a PyTorch state dict
saved as safetensors (pickles refused), and Keras 3's or Keras 2's HDF5 weights, also inside a
`.keras` archive. Which model a file fits is `zoo.weights.files`' business."""

import io
import os
import re
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

from zoo.layers import importers
from zoo.weights import WeightsError


def _exists(path: str) -> None:
    if not os.path.isfile(path):
        raise WeightsError(f"no weight file {path}")


def read_torch(path: str) -> dict[str, np.ndarray]:
    """`{name: array}` of a PyTorch state dict saved as safetensors; a pickle is refused
    unopened."""
    if not path.endswith(importers.PICKLED):  # refused below, before anything is opened
        _exists(path)
    try:
        return importers.read_state_dict(path)
    except ValueError as error:
        raise WeightsError(str(error)) from None


def read_keras(path: str) -> dict[str, list[np.ndarray]]:
    """`{layer name: its weights}` as `layer.get_weights()` lists them, the layers with weights
    in the model's order (within each layer class, for Keras 3 files)."""
    _exists(path)
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "reading Keras weight files needs h5py, which Keras installs: "
            "pip install 'zoo[keras]' (or pip install h5py)"
        ) from None
    file: Any = path
    if zipfile.is_zipfile(path):  # a .keras archive: config.json, model.weights.h5
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise WeightsError(f"{path} is a zip archive without model.weights.h5")
            file = io.BytesIO(archive.read("model.weights.h5"))
    try:
        h5 = h5py.File(file, "r")
    except OSError as error:
        raise WeightsError(f"cannot read {path} as a Keras weights file (HDF5): {error}") from None
    with h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5  # Keras 2's model.save
        if "layer_names" in root.attrs:
            layers = _keras2_layers(root)
        elif "layers" in root:
            layers = _keras3_layers(root["layers"])
        else:
            raise WeightsError(
                f"{path} holds no Keras layers (neither Keras 3's layers/ group nor Keras 2's "
                "layer_names)"
            )
    named: dict[str, list[np.ndarray]] = {}
    for group, name, weights in layers:
        named[group if name in named else name] = weights
    return named


def _keras3_layers(layers) -> list[tuple[str, str, list[np.ndarray]]]:
    found = []
    for group in sorted(layers, key=_natural):  # dense, dense_1, ..., dense_10
        layer = layers[group]
        if "layers" in layer:  # a model inside the model
            found += _keras3_layers(layer["layers"])
            continue
        weights = _keras3_arrays(layer)
        if weights:
            name = layer["vars"].attrs.get("name", group) if "vars" in layer else group
            found.append((group, _text(name), weights))
    return found


def _keras3_arrays(group) -> list[np.ndarray]:
    """A layer's own `vars`, then its sublayers' (a Bidirectional's forward layer first), the
    order of `layer.get_weights()`."""
    arrays = []
    if "vars" in group:
        arrays += [_array(group["vars"][key]) for key in sorted(group["vars"], key=int)]
    children = sorted(
        (key for key in group if key != "vars"),
        key=lambda key: (key != "forward_layer", _natural(key)),
    )
    for key in children:
        arrays += _keras3_arrays(group[key])
    return arrays


def _keras2_layers(root) -> list[tuple[str, str, list[np.ndarray]]]:
    found = []
    for name in map(_text, root.attrs["layer_names"]):
        layer = root[name]
        weights = [_array(layer[_text(w)]) for w in layer.attrs.get("weight_names", [])]
        if weights:
            found.append((name, name, weights))
    return found


def _array(dataset) -> np.ndarray:
    if dataset.attrs.get("dtype") == "bfloat16":  # how Keras 3 stores bfloat16
        return np.asarray(dataset[()].view(jnp.bfloat16), np.float32)
    return np.asarray(dataset)


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
