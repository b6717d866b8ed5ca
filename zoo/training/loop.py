"""`train_and_evaluate`: the whole run, from config to `metrics.json`."""

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from zoo import data, models
from zoo.data.splits import Dataset, Split
from zoo.training import metrics as metrics_lib
from zoo.training.config import ConfigError, TrainConfig
from zoo.training.state import TrainState, create_train_state
from zoo.training.steps import Metrics, eval_step, train_step


def evaluate(state: TrainState, split: Split, batch_size: int, num_classes: int) -> dict[str, Any]:
    """Loss, accuracy, macro-F1 and confusion matrix of `state` on every example of `split`."""
    predictions, sums = [], []
    for batch in data.batches(split, batch_size, remainder="pad"):
        batch_predictions, batch_sums = eval_step(state, batch)
        predictions.append(batch_predictions)
        sums.append(batch_sums)
    predictions = np.concatenate(jax.device_get(predictions))[: len(split.y)]
    confusion = np.asarray(metrics_lib.confusion_matrix(split.y, predictions, num_classes))
    return {
        "loss": _summarize(sums)["loss"],
        "accuracy": float(metrics_lib.accuracy_from_confusion(confusion)),
        "macro_f1": float(metrics_lib.macro_f1_from_confusion(confusion)),
        "confusion_matrix": confusion.tolist(),
    }


def _summarize(step_metrics: list[Metrics]) -> dict[str, float]:
    totals = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *step_metrics))  # one host sync
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count}


def check_dataset(dataset: Dataset, config: TrainConfig) -> None:
    """Rejects datasets a run cannot train on, before anything is compiled."""
    if len(dataset.train.x) == 0:
        raise ConfigError(f"dataset {config.dataset!r} has an empty training split")
    if config.batch_size > len(dataset.train.x):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(dataset.train.x)} training "
            f"examples of {config.dataset!r}"
        )
    for name, split in dataset._asdict().items():
        if isinstance(split, Split) and len(split.y):
            low, high = int(split.y.min()), int(split.y.max())
            if low < 0 or high >= dataset.num_classes:
                raise ConfigError(
                    f"{name} labels must be in [0, {dataset.num_classes}), found {low}..{high}"
                )
        if isinstance(split, Split) and len(split.x) and not np.isfinite(split.x).all():
            raise ConfigError(f"{name} split of {config.dataset!r} holds NaN or infinite inputs")


def build_model(config: TrainConfig, dataset: Dataset):
    """The registry model for `config`, shaped for `dataset`."""
    fixed = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes}
    clash = sorted(set(fixed) & set(config.model_options))
    if clash:
        raise ConfigError(f"model_options may not set {', '.join(clash)}: the dataset decides them")
    return models.create(config.model, **fixed, **config.model_options)


def train_and_evaluate(
    config: TrainConfig, workdir: str, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trains `config.model` on `config.dataset`, evaluates on the test split, writes metrics.

    Returns the dict written to `workdir/metrics.json`.
    """
    dataset = data.load(config.dataset, seed=config.seed, path=config.data_path)
    check_dataset(dataset, config)
    model = build_model(config, dataset)
    state = create_train_state(model, config, dataset.input_shape)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    steps_per_epoch = data.num_batches(len(dataset.train.x), config.batch_size)
    log(
        f"{config.model}: {num_params:,} params | {config.dataset}: {len(dataset.train.x)} train, "
        f"{len(dataset.validation.x)} validation, {len(dataset.test.x)} test | "
        f"{steps_per_epoch} steps/epoch"
    )

    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        step_metrics = []
        for batch in data.batches(
            dataset.train, config.batch_size, seed=config.seed, epoch=epoch, remainder="drop"
        ):
            state, batch_metrics = train_step(state, batch)
            step_metrics.append(batch_metrics)
        train = _summarize(step_metrics)
        epoch_seconds = time.perf_counter() - epoch_start
        record = {
            "epoch": epoch + 1,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
        }
        if len(dataset.validation.x):
            val = evaluate(state, dataset.validation, config.batch_size, dataset.num_classes)
            record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        history.append(record)
        log(
            f"epoch {epoch + 1:3d}/{config.epochs} | loss {train['loss']:.4f} | "
            f"acc {train['accuracy']:.4f} | "
            + (f"val_acc {record['val_accuracy']:.4f} | " if "val_accuracy" in record else "")
            + f"{steps_per_epoch * config.batch_size / epoch_seconds:,.0f} ex/s"
        )
    train_seconds = time.perf_counter() - start

    test = evaluate(state, dataset.test, config.batch_size, dataset.num_classes)
    log(f"test | accuracy {test['accuracy']:.4f} | macro-F1 {test['macro_f1']:.4f}")
    results = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "steps": int(state.step),
        "num_params": num_params,
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_loss": test["loss"],
        "test_confusion_matrix": test["confusion_matrix"],
        "train_seconds": train_seconds,
        "examples_per_second": int(state.step) * config.batch_size / train_seconds,
        "history": history,
        "config": config.to_dict(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
    }
    write_json(os.path.join(workdir, "metrics.json"), results)
    return results


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON atomically: a reader sees the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
