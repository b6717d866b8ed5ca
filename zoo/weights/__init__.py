"""Pretrained weights that ship inside the package: one per model with a bundled dataset.

    zoo.pretrained()               # {name: its card}: dataset, metric, the command that made it
    trained = zoo.pretrained("cnn")   # what zoo.load gives: model, variables, predict, ...

Each model has `NAME.safetensors` (its variables, stored in float16 to keep the package small)
and a card `NAME.json`: the config and the exact command that trained it (its preset, seed 0),
what `dataset.json` recorded of its data, its test metrics measured with the stored float16
weights, the library versions and the file's sha256, checked on every load. Nothing is ever
downloaded. `python -m zoo.weights [NAME ...]` retrains and rewrites them from their presets.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np

WEIGHTS = os.path.dirname(os.path.abspath(__file__))
# The models that train on a bundled dataset, and the test metric each card leads with.
METRICS = {
    "cnn": "test_accuracy",
    "rnn": "test_accuracy",
    "birnn": "test_accuracy",
    "lstm": "test_accuracy",
    "gru": "test_accuracy",
    "bilstm": "test_accuracy",
    "bigru": "test_accuracy",
    "cnn_lstm": "test_accuracy",
    "lenet5": "test_accuracy",
    "lenet5_relu": "test_accuracy",
    "resnet20": "test_accuracy",
    "tcn": "test_accuracy",
    "tcn_forecast": "test_mse",
    "convlstm": "test_accuracy",
    "autoencoder": "test_mse",
    "vae": "test_elbo",
    "tagger": "test_accuracy",
    "seq2seq": "test_exact_match",
    "charlm": "test_bpc",
    "forecast": "test_mse",
}
STORED_DTYPE = np.float16


class WeightsError(ValueError):
    """A weight file is missing, altered, or for another model; the message names it."""


def pretrained(name: str | None = None):
    """`zoo.load`'s `Trained` for the shipped weights of model `name`; with no name, every
    shipped card by name."""
    if name is None:
        return {n: _card(n) for n in sorted(METRICS) if os.path.exists(_path(n, ".json"))}
    from zoo.trained import Trained
    from zoo.training.config import TrainConfig
    from zoo.training.state import model_for

    if name not in METRICS:
        raise WeightsError(f"no pretrained weights for {name!r}; there are: {', '.join(METRICS)}")
    card = _card(name)
    filename = _path(name, ".safetensors")
    digest = _sha256(filename)
    if digest != card["sha256"]:
        raise WeightsError(
            f"{filename} has sha256 {digest}, its card {_path(name, '.json')} says "
            f"{card['sha256']}: the file was altered"
        )
    config = TrainConfig.from_dict(card["config"])
    described = card["dataset"]
    model = model_for(
        config,
        described["num_classes"],
        tuple(described["input_shape"]),
        len(described["vocab"]) if described.get("vocab") else None,
    )
    variables = read_variables(filename, _like(model, described))
    return Trained(model, variables, config, described, card["step"], "best")


def read_variables(filename: str, like: Any) -> Any:
    """The variables in a safetensors file, as a tree shaped and typed like `like`; a file for
    another architecture is refused listing the leaves that differ."""
    from safetensors.numpy import load_file

    from zoo.training.checkpoint import check_compatible

    flat = load_file(filename)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    stored = {name: [list(array.shape), "-"] for name, array in flat.items()}
    expected = {_key(path): [list(leaf.shape), "-"] for path, leaf in leaves}
    try:
        check_compatible(stored, expected, filename)
    except ValueError as error:
        raise WeightsError(str(error).replace("checkpoint", "weight file", 1)) from None
    arrays = [flat[_key(path)].astype(leaf.dtype) for path, leaf in leaves]
    return jax.tree.unflatten(treedef, arrays)


def write_variables(filename: str, variables: Any) -> None:
    from safetensors.numpy import save_file

    flat = {
        _key(path): np.asarray(leaf, STORED_DTYPE)
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
    }
    save_file(flat, filename)


def build(name: str, log=print) -> dict[str, Any]:
    """Trains `name` with its preset (seed 0), stores its best variables in float16 and writes
    its card with the test metrics of the stored weights."""
    from zoo import data
    from zoo.trained import load
    from zoo.training import TrainConfig, train_and_evaluate

    config = TrainConfig.for_model(name, seed=0)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = train_and_evaluate(config, out, log=lambda _: None)
        trained = load(out)
        filename = _path(name, ".safetensors")
        write_variables(filename, trained.variables)
        stored = read_variables(filename, trained.variables)
        dataset = data.load(config.dataset, seed=config.seed, task=trained.task)
        metrics = dataclasses.replace(trained, variables=stored).evaluate(dataset.test)
    from zoo.training.checkpoint import versions

    test = {f"test_{k}": v for k, v in metrics.items() if k != "confusion_matrix"}
    card = {
        "name": name,
        "command": f"python train.py --model {name} --seed 0",
        "config": config.to_dict(),
        "dataset": trained.dataset | {"data_path": None},
        "step": trained.step,
        "best_epoch": results["best_epoch"],
        "metric": METRICS[name],
        "value": test[METRICS[name]],
        "metrics": test,
        "metrics_in_float32": {k: results[k] for k in test if k in results},
        "stored_dtype": np.dtype(STORED_DTYPE).name,
        "train_seconds": results["train_seconds"],
        "built": time.strftime("%Y-%m-%d"),
        "build_seconds": time.perf_counter() - start,
        "versions": versions(),
        "sha256": _sha256(filename),
    }
    with open(_path(name, ".json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    log(f"{name}: {card['metric']} {card['value']:.4f} ({os.path.getsize(filename):,} bytes)")
    return card


def _like(model, described) -> Any:
    example = np.zeros((1, *described["input_shape"]), described.get("input_dtype", "float32"))
    return jax.eval_shape(model.init, jax.random.key(0), example)


def _key(path) -> str:
    return "/".join(str(getattr(part, "key", part)) for part in path)


def _path(name: str, suffix: str) -> str:
    return os.path.join(WEIGHTS, name + suffix)


def _card(name: str) -> dict[str, Any]:
    try:
        with open(_path(name, ".json")) as f:
            return json.load(f)
    except FileNotFoundError:
        raise WeightsError(
            f"no card {_path(name, '.json')}: build it with python -m zoo.weights {name}"
        ) from None


def _sha256(filename: str) -> str:
    try:
        with open(filename, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        raise WeightsError(f"no weight file {filename}") from None
