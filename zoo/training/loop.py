"""`train_and_evaluate`: the whole run, from config to `metrics.json`."""

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo import data, models
from zoo.data.splits import Dataset, Split
from zoo.training import metrics as metrics_lib
from zoo.training import plots
from zoo.training.config import ConfigError, TrainConfig
from zoo.training.early_stopping import EarlyStopping, check_monitor, default_monitor
from zoo.training.progress import EpochProgress, on_terminal
from zoo.training.state import TrainState, create_train_state
from zoo.training.steps import Metrics, eval_step, train_step


def evaluate(state: TrainState, split: Split, batch_size: int, num_classes: int) -> dict[str, Any]:
    """Metrics of `state` on every example of `split`, by task.

    'classify': loss, accuracy, macro_f1, confusion_matrix; 'language': loss (nats per token),
    accuracy and bpc (bits per character); 'regress': loss, the mean squared error.
    """
    predictions, sums = [], []
    for batch in data.batches(split, batch_size, remainder="pad"):
        batch_predictions, batch_sums = eval_step(state, batch)
        predictions.append(batch_predictions)
        sums.append(batch_sums)
    summary = _summarize(sums)
    if state.task == "regress":
        return {"loss": summary["loss"], "mse": summary["loss"]}
    if state.task == "language":
        return summary | {"bpc": summary["loss"] / math.log(2)}
    predictions = np.concatenate(jax.device_get(predictions))[: len(split.y)]
    confusion = np.asarray(metrics_lib.confusion_matrix(split.y, predictions, num_classes))
    return {
        "loss": summary["loss"],
        "accuracy": float(metrics_lib.accuracy_from_confusion(confusion)),
        "macro_f1": float(metrics_lib.macro_f1_from_confusion(confusion)),
        "confusion_matrix": confusion.tolist(),
    }


def _summarize(step_metrics: list[Metrics]) -> dict[str, float]:
    totals = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *step_metrics))  # one host sync
    count = max(float(totals["count"]), 1.0)
    summary = {"loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:
        summary["accuracy"] = float(totals["correct"]) / count
    return summary


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
        if isinstance(split, Split) and len(split.y) and dataset.task != "regress":
            low, high = int(split.y.min()), int(split.y.max())
            if low < 0 or high >= dataset.num_classes:
                raise ConfigError(
                    f"{name} labels must be in [0, {dataset.num_classes}), found {low}..{high}"
                )
        if isinstance(split, Split) and len(split.x) and not np.isfinite(split.x).all():
            raise ConfigError(f"{name} split of {config.dataset!r} holds NaN or infinite inputs")
    if config.augment and dataset.train.x.ndim != 4:
        raise ConfigError(
            f"augment needs images (batch, height, width, channels); dataset {config.dataset!r} "
            f"has inputs of shape {dataset.train.x.shape}"
        )
    if config.patience is not None and not len(dataset.validation.x):
        raise ConfigError(f"patience needs a validation split; {config.dataset!r} has none")


def build_model(config: TrainConfig, dataset: Dataset):
    """The registry model for `config`, shaped for `dataset`: its input shape (for models that
    fix one) and its output width (`num_classes`, or a forecaster's `horizon`)."""
    if models.task(config.model) != dataset.task:
        raise ConfigError(
            f"model {config.model!r} is a {models.task(config.model)} model but dataset "
            f"{config.dataset!r} is a {dataset.task} dataset; pick a matching --dataset or --model"
        )
    accepted = models.options(config.model)
    fixed = {"horizon" if "horizon" in accepted else "num_classes": dataset.num_classes}
    if "input_shape" in accepted:
        fixed["input_shape"] = dataset.input_shape
    clash = sorted(set(fixed) & set(config.model_options))
    if clash:
        raise ConfigError(f"model_options may not set {', '.join(clash)}: the dataset decides them")
    return models.create(config.model, **fixed, **config.model_options)


def train_and_evaluate(
    config: TrainConfig,
    workdir: str,
    *,
    log: Callable[[str], None] = print,
    verbose: bool = True,
    progress: bool | None = None,
    plot: bool = False,
) -> dict[str, Any]:
    """Trains `config.model` on `config.dataset`, evaluates on the test split, writes metrics.

    Writes `workdir/metrics.jsonl` (one line per epoch, as it ends), `workdir/metrics.json` (the
    returned summary) and with `plot` `curves.png` and `confusion.png`. With early stopping
    (`config.patience`) the test metrics are those of the best validation epoch's parameters.

    Args:
      log: where progress lines go.
      verbose: False logs only the test line.
      progress: a progress bar per epoch; None: when stderr is a terminal and `verbose`.
    """
    if plot:
        plots.require_matplotlib()
    dataset = data.load(config.dataset, seed=config.seed, path=config.data_path)
    check_dataset(dataset, config)
    monitor = config.monitor or default_monitor(dataset.task)
    check_monitor(monitor, dataset.task)
    model = build_model(config, dataset)
    steps_per_epoch = data.num_batches(len(dataset.train.x), config.batch_size)
    state = create_train_state(
        model, config, dataset.train.x[:1], dataset.task, steps_per_epoch=steps_per_epoch
    )
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    show = log if verbose else lambda _: None
    show_bar = progress if progress is not None else verbose and on_terminal()
    show(
        f"{config.model}: {num_params:,} params | {config.dataset}: {len(dataset.train.x)} train, "
        f"{len(dataset.validation.x)} validation, {len(dataset.test.x)} test | "
        f"{steps_per_epoch} steps/epoch"
    )

    os.makedirs(workdir, exist_ok=True)
    history_path = os.path.join(workdir, "metrics.jsonl")
    open(history_path, "w").close()
    history = []
    stopper = EarlyStopping(monitor, config.patience, config.min_delta)
    best = None
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        with EpochProgress(
            epoch,
            config.epochs,
            steps_per_epoch,
            config.batch_size,
            enabled=show_bar,
        ) as bar:
            for batch in data.batches(
                dataset.train,
                config.batch_size,
                seed=config.seed,
                epoch=epoch - 1,
                remainder="drop",
            ):
                state, batch_metrics = train_step(state, batch)
                bar.step(batch_metrics)
        record = {"epoch": epoch} | {f"train_{k}": v for k, v in _summarize(bar.metrics).items()}
        record["examples_per_second"] = (
            steps_per_epoch * config.batch_size / (time.perf_counter() - epoch_start)
        )
        if len(dataset.validation.x):
            val = evaluate(state, dataset.validation, config.batch_size, dataset.num_classes)
            record |= {f"val_{k}": v for k, v in val.items() if k != "confusion_matrix"}
            if stopper.update(epoch, record[monitor]) and config.patience is not None:
                best = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
        history.append(record)
        append_jsonl(history_path, record)
        shown = " | ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "examples_per_second")
        )
        show(
            f"epoch {epoch:3d}/{config.epochs} | {shown} | "
            f"{record['examples_per_second']:,.0f} ex/s"
        )
        if stopper.should_stop:
            show(
                f"early stopping: no {monitor} improvement over {config.min_delta} for "
                f"{config.patience} epochs; restoring epoch {stopper.best_epoch} "
                f"({monitor} {stopper.best:.4f})"
            )
            break
    train_seconds = time.perf_counter() - start
    if best is not None:
        state = state.replace(params=best[0], batch_stats=best[1])

    test = {
        f"test_{k}": v
        for k, v in evaluate(state, dataset.test, config.batch_size, dataset.num_classes).items()
    }
    if dataset.task == "regress":
        test["naive_mse"] = data.naive_forecast_mse(dataset.test)
    log("test | " + " | ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)))
    results = {
        "model": config.model,
        "dataset": config.dataset,
        "task": dataset.task,
        "epochs": len(history),
        "steps": int(state.step),
        "monitor": monitor,
        "monitor_value": _final_value(history, monitor, stopper, restored=best is not None),
        "best_epoch": stopper.best_epoch,
        "num_params": num_params,
        **test,
        "train_seconds": train_seconds,
        "examples_per_second": int(state.step) * config.batch_size / train_seconds,
        "history": history,
        "config": config.to_dict(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
    }
    write_json(os.path.join(workdir, "metrics.json"), results)
    if plot:
        plots.plot_curves(
            history, os.path.join(workdir, "curves.png"), best_epoch=stopper.best_epoch
        )
        if "test_confusion_matrix" in test:
            plots.plot_confusion(
                test["test_confusion_matrix"], os.path.join(workdir, "confusion.png")
            )
    return results


def _final_value(history, monitor, stopper, *, restored: bool) -> float | None:
    """The monitored validation metric of the parameters the run ends with."""
    if restored:
        return stopper.best
    return history[-1].get(monitor)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Appends one JSON line and flushes it to disk, so a killed run keeps every finished epoch."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON atomically: a reader sees the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
