"""Weights from files people already have: a PyTorch state dict or a Keras weights file, as the
variables of the zoo model with the same architecture.

    model = zoo.models.create("resnet18", input_shape=(32, 32, 3), num_classes=10)
    variables = zoo.load_weights("resnet18.safetensors", model)  # {"params", "batch_stats"}
    logits = model.apply(variables, x)

The format comes from the file's name, or from `source`:

- `.safetensors` (`source="torch"`): a PyTorch `state_dict` saved with
  `safetensors.torch.save_file(model.state_dict(), path)`. Pickles (`.pt`, `.pth`, `.bin`,
  `.ckpt`, `.pkl`) are refused, never unpickled, with that line to save one as safetensors.
- `.weights.h5`, `.h5` (`source="keras"`): Keras 3's `model.save_weights`, a group per layer
  under `layers/` (named after its class: `conv2d`, `conv2d_1`, ... in the model's order), its
  arrays in `vars/0`, `vars/1`, ... and a sublayer's under its attribute (`lstm/cell/vars`,
  `bidirectional/forward_layer/...`), the layer's own name in the `name` attribute of its `vars`;
  or the Keras 2 layout (`layer_names` and `weight_names` attributes). `.keras`: Keras 3's
  archive, whose `model.weights.h5` is read.

Each model family goes through its in-memory importer, which the parity tests check against the
PyTorch and Keras definitions:

- `cnn`: `cnn_from_torch`; Keras: three Conv2D and two Dense layers, in order.
- `rnn`, `lstm`, `gru`, `birnn`, `bilstm`, `bigru`: `from_torch` of the `nn.RNN`/`LSTM`/`GRU`
  module(s) and one `nn.Linear`; Keras: `from_keras` of the recurrent layers (each maybe in a
  `Bidirectional`) and one Dense.
- `vgg*`, `resnet*`: `vgg.from_torch`, `resnet.from_torch` (torchvision's names);
  `vgg.from_keras`, `resnet.from_keras` (Keras `applications`' names).
- `mobilenet_v2`: Keras only, `mobilenet.from_keras` (`applications`' names).
- `convlstm`: Keras only, `from_keras_convlstm` of the ConvLSTM2D layers and one Dense.

The result is checked against the model's own `init`: a file for another architecture is
refused in one line listing the leaves that differ (as resuming a checkpoint does), tensors the
model would leave unread included, so a ResNet-34's file never loads into a ResNet-18 (a model
with `include_top=False` may leave the file's classifier unread).
"""

import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers import importers
from zoo.layers.convlstm import from_keras_convlstm
from zoo.models import mobilenet, resnet, vgg
from zoo.models.cnn import SeedCNN
from zoo.models.convlstm import ConvLSTMClassifier
from zoo.models.rnn import RNNClassifier
from zoo.weights import WeightsError, _key, readers

SOURCES = ("torch", "keras")
COUNTERS = ("num_batches_tracked",)  # PyTorch's batch norm counts its steps: not a weight
Importer = Callable[[Any, Mapping[str, Any]], dict]


def load_weights(path: str | os.PathLike, model: Any, *, source: str | None = None) -> dict:
    """The variables of `model` (a zoo Linen module, e.g. `zoo.models.create(...)`) from a
    PyTorch state dict saved as safetensors or a Keras weights file, shaped and typed as
    `model.init` gives them.

    Args:
      path: the file; its suffix says what it holds (see the module docstring).
      model: the zoo model with the file's architecture.
      source: 'torch' or 'keras' for a file whose name does not say.

    Raises:
      WeightsError: for a missing, unreadable or pickled file, a model family with no importer
        for that source, or a file for another architecture, naming the leaves that differ.
    """
    if isinstance(model, str):
        raise TypeError(f"model is a zoo model, zoo.models.create({model!r}, ...), not its name")
    path = os.fspath(path)
    source = source or _source(path)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    importer = _importer(model, source)
    tensors = readers.read_torch(path) if source == "torch" else readers.read_keras(path)
    like = _init_shapes(model)
    expected = _leaves(like)
    variables, unread, error = _attempt(model, importer, tensors)
    if error is None and not unread and _leaves(variables) == expected:
        imported = {_key(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
        leaves, treedef = jax.tree_util.tree_flatten_with_path(like)  # init's tree and dtypes
        return jax.tree.unflatten(
            treedef, [jnp.asarray(imported[_key(p)], leaf.dtype) for p, leaf in leaves]
        )
    for relative in _relatives(model):  # the same family at another depth: name that one
        other, other_unread, other_error = _attempt(relative, importer, tensors)
        if other_error is None and not other_unread:
            fits = _leaves(other)
            if fits == _leaves(_init_shapes(relative)):
                hint = f"; it holds a {type(model).__name__} of depth {relative.depth}"
                raise _mismatch(path, model, fits, expected, hint)
    if error is not None:
        raise WeightsError(
            f"weight file {path} does not fit this {type(model).__name__}: {error}"
        ) from None
    found = _leaves(variables) | {name: [[], "-"] for name in unread}
    raise _mismatch(path, model, found, expected, "")


def _source(path: str) -> str:
    if path.endswith((".safetensors", *importers.PICKLED)):  # read_state_dict refuses pickles
        return "torch"
    if path.endswith((".h5", ".hdf5", ".keras")):
        return "keras"
    raise WeightsError(
        f"cannot tell what {path} holds from its name: give source='torch' (a PyTorch state "
        "dict saved as safetensors) or source='keras' (a Keras .weights.h5 file)"
    )


# --- importing and checking ----------------------------------------------------------------------


class _Reads(Mapping):
    """A state dict (or Keras layers) that remembers what an importer read and looked for."""

    def __init__(self, items: Mapping[str, Any]):
        self._items = items
        self.read: set[str] = set()
        self.missed: list[str] = []

    def __getitem__(self, key: str) -> Any:
        if key not in self._items:
            self.missed.append(key)
            raise KeyError(key)
        self.read.add(key)
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        if key in self._items:
            return True
        self.missed.append(str(key))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _attempt(model, importer: Importer, tensors: Mapping[str, Any]):
    """(variables, the file's entries left unread, the error) of one import."""
    reads = _Reads(tensors)
    try:
        variables = importer(model, reads)
    except (KeyError, IndexError, ValueError) as error:
        return None, [], _what_failed(error, reads)
    unread = [key for key in tensors if key not in reads.read and not key.endswith(COUNTERS)]
    if unread and getattr(model, "include_top", True) is False:
        _, with_top, failed = _attempt(model.clone(include_top=True), importer, tensors)
        unread = unread if failed or with_top else []  # only the classifier it leaves out
    return variables, unread, None


def _what_failed(error: Exception, reads: _Reads) -> str:
    if reads.missed and repr(reads.missed[-1]) in str(error):  # a lookup that found nothing
        names = list(reads)
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
        return f"it has no {reads.missed[-1]!r} (it has {shown})"
    if isinstance(error, IndexError):
        return "it has fewer layers than this model reads"
    message = str(error)
    return message if len(message) < 300 else message[:300] + " ..."


def _mismatch(path: str, model, found: dict, expected: dict, hint: str) -> WeightsError:
    """The one line of resume's `check_compatible`, about a weight file."""
    from zoo.training.checkpoint import check_compatible

    placeholder = "\0"  # the path may say "checkpoint" itself
    try:
        check_compatible(found, expected, placeholder)
    except ValueError as error:
        message = str(error).replace("checkpoint", "weight file").replace("this run", "this model")
        message = message.replace("this model/config", f"this {type(model).__name__}")
        message = message.replace("leaves differ)", f"leaves differ{hint})")
        return WeightsError(re.sub(r" -(?=[,;]|$)", "", message).replace(placeholder, path))
    return WeightsError(f"weight file {path} does not fit this {type(model).__name__}")


def _init_shapes(model) -> Any:
    shape = tuple(1 if size is None else size for size in model.input_shape)
    example = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), example)


def _leaves(tree) -> dict[str, list]:
    return {
        _key(path): [list(np.shape(leaf)), "-"]
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _relatives(model) -> list:
    if isinstance(model, vgg.VGG | resnet.ResNet):
        sizes = vgg.SIZES if isinstance(model, vgg.VGG) else resnet.SIZES
        return [model.clone(depth=depth) for depth in sizes if depth != model.depth]
    return []


# --- the families --------------------------------------------------------------------------------


def _importer(model, source: str) -> Importer:
    table = TORCH if source == "torch" else KERAS
    for family, importer in table.items():
        if isinstance(model, family):
            return importer
    covered = ", ".join(family.__name__ for family in table)
    raise WeightsError(
        f"no {'PyTorch' if source == 'torch' else 'Keras'} importer for "
        f"{type(model).__name__}; there are for: {covered}"
    )


def _dense(weights: list) -> dict[str, np.ndarray]:
    kernel, bias = weights
    return {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}


def _head(layers: list[list], after: str) -> dict[str, np.ndarray]:
    dense = [weights for weights in layers if len(weights) == 2 and np.ndim(weights[0]) == 2]
    if len(dense) != 1:
        raise ValueError(f"expected one Dense layer after the {after}, found {len(dense)}")
    return _dense(dense[0])


def _cnn_from_torch(model: SeedCNN, state_dict: Mapping) -> dict:
    return {"params": importers.cnn_from_torch(state_dict, model.input_shape)}


def _cnn_from_keras(model: SeedCNN, layers: Mapping) -> dict:
    weights = list(layers.values())
    convs = [w for w in weights if np.ndim(w[0]) == 4]
    dense = [w for w in weights if np.ndim(w[0]) == 2]
    if (len(convs), len(dense)) != (3, 2) or len(weights) != 5:
        raise ValueError(
            "the seed CNN has three Conv2D and two Dense layers; the file has "
            f"{len(convs)} and {len(dense)} among {len(weights)} layers"
        )
    params = {f"Conv_{i}": _dense(w) for i, w in enumerate(convs)}
    return {"params": params | {f"Dense_{i}": _dense(w) for i, w in enumerate(dense)}}


_TORCH_RECURRENT = re.compile(r"(.*?)((?:weight|bias)_(?:ih|hh)_l(\d+)(?:_reverse)?)")


def _rnn_from_torch(model: RNNClassifier, state_dict: Mapping) -> dict:
    """One or more `nn.RNN`/`LSTM`/`GRU` modules (stacked in the order of their names) and one
    `nn.Linear` on the last hidden state."""
    if model.cell == "gru" and not model.reset_after:
        raise ValueError("PyTorch's GRU is reset_after=True; this model has reset_after=False")
    modules: dict[str, dict[str, Any]] = {}
    others = {}
    for key, value in state_dict.items():
        match = _TORCH_RECURRENT.fullmatch(key)
        if match:
            modules.setdefault(match.group(1), {})[match.group(2)] = value
        else:
            others[key] = value
    if not modules:
        raise ValueError("the state dict has no nn.RNN/LSTM/GRU weights (weight_ih_l0, ...)")
    layers, offset = {}, 0
    for weights in modules.values():
        imported = importers.from_torch(weights, model.cell)
        for name, layer in imported.items():  # layer_{k}[_forward], numbered on from `offset`
            _, k, *direction = name.split("_")
            layers["_".join(["layer", str(offset + int(k)), *direction])] = layer
        offset += 1 + max(int(name.split("_")[1]) for name in imported)
    linear = [key for key in others if key.endswith("weight")]
    if len(linear) != 1:
        raise ValueError(f"expected one nn.Linear after the recurrent layers, found {linear}")
    bias = others.get(linear[0].removesuffix("weight") + "bias")
    head = importers.dense_from_torch(others[linear[0]], bias)
    return {"params": {"StackedRNN_0": layers, "Dense_0": head}}


def _rnn_from_keras(model: RNNClassifier, layers: Mapping) -> dict:
    """Recurrent layers (`SimpleRNN`/`LSTM`/`GRU`, or each in `Bidirectional`) and one Dense."""
    weights = list(layers.values())
    recurrent = [w for w in weights if len(w) in (3, 6) and np.ndim(w[1]) == 2]
    stacked = importers.from_keras(
        recurrent, model.cell, bidirectional=model.bidirectional, reset_after=model.reset_after
    )
    return {"params": {"StackedRNN_0": stacked, "Dense_0": _head(weights, "recurrent layers")}}


def _convlstm_from_keras(model: ConvLSTMClassifier, layers: Mapping) -> dict:
    """`ConvLSTM2D` layers, a global pooling and one Dense."""
    weights = list(layers.values())
    convlstm = [w for w in weights if len(w) in (2, 3) and np.ndim(w[1]) == 4]
    params = {f"convlstm_{i}": from_keras_convlstm(w) for i, w in enumerate(convlstm)}
    return {"params": params | {"Dense_0": _head(weights, "ConvLSTM2D layers")}}


TORCH: dict[type, Importer] = {
    SeedCNN: _cnn_from_torch,
    RNNClassifier: _rnn_from_torch,
    vgg.VGG: vgg.from_torch,
    resnet.ResNet: resnet.from_torch,
}
KERAS: dict[type, Importer] = {
    SeedCNN: _cnn_from_keras,
    RNNClassifier: _rnn_from_keras,
    vgg.VGG: vgg.from_keras,
    resnet.ResNet: resnet.from_keras,
    mobilenet.MobileNetV2: mobilenet.from_keras,
    ConvLSTMClassifier: _convlstm_from_keras,
}
