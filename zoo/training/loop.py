"""`train_and_evaluate`: the whole run, from config to `metrics.json`."""

import dataclasses
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo import data, models
from zoo.data.splits import RECONSTRUCTION_TASKS, Dataset, Split
from zoo.data.streaming import BatchStream, StepReader, require_grain
from zoo.models.seq2seq import EOS
from zoo.training import parallel as parallel_lib
from zoo.training import plots
from zoo.training import tensorboard as tensorboard_lib
from zoo.training import workdir as workdir_lib
from zoo.training.checkpoint import Checkpointer, TerminationGuard, open_checkpoints, versions
from zoo.training.config import RUN_LENGTH_SCHEDULES, ConfigError, TrainConfig
from zoo.training.early_stopping import EarlyStopping, check_monitor, default_monitor
from zoo.training.metrics import evaluate, majority_tag_accuracy, mean_image_mse
from zoo.training.parallel import DataParallel, InFlight, prefetch
from zoo.training.precision import LossScale
from zoo.training.progress import EpochProgress, on_terminal
from zoo.training.state import (
    TrainState,
    build_model,
    create_schedule,
    create_train_state,
    initialize_from,
)
from zoo.training.steps import summarize_metrics


def check_dataset(dataset: Dataset, config: TrainConfig) -> None:
    """Rejects datasets a run cannot train on, before anything is compiled."""
    task = models.task(config.model)
    if task in RECONSTRUCTION_TASKS and task != dataset.task:
        raise ConfigError(
            f"model {config.model!r} reconstructs images (batch, height, width, channels); "
            f"dataset {config.dataset!r} has inputs of shape {dataset.train.x.shape}"
        )
    if task != dataset.task:
        raise ConfigError(
            f"model {config.model!r} is a {models.task(config.model)} model but dataset "
            f"{config.dataset!r} is a {dataset.task} dataset; pick a matching --dataset or --model"
        )
    if len(dataset.train.x) == 0:
        raise ConfigError(f"dataset {config.dataset!r} has an empty training split")
    if dataset.train.lengths is not None and not models.takes_lengths(config.model):
        raise ConfigError(
            f"dataset {config.dataset!r} holds sequences of different lengths, which model "
            f"{config.model!r} cannot take; pad them yourself or pick a recurrent model"
        )
    if config.bucket_by_length and dataset.train.lengths is None:
        raise ConfigError(
            f"bucket_by_length needs sequences of different lengths; dataset {config.dataset!r} "
            "has none (its examples are of one shape)"
        )
    if config.batch_size > len(dataset.train.x):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(dataset.train.x)} training "
            f"examples of {config.dataset!r}"
        )
    for name, split in dataset._asdict().items():
        labelled = dataset.task in ("classify", "tag", "language", "seq2seq")
        if isinstance(split, Split) and len(split.y) and labelled:
            low, high = int(split.y.min()), int(split.y.max())
            if low < 0 or high >= dataset.num_classes:
                raise ConfigError(
                    f"{name} labels must be in [0, {dataset.num_classes}), found {low}..{high}"
                )
        # Arrays only: an image folder's pixels are finite by construction, and read lazily.
        arrays = isinstance(split, Split) and isinstance(split.x, np.ndarray)
        if arrays and len(split.x) and not np.isfinite(split.x).all():
            raise ConfigError(f"{name} split of {config.dataset!r} holds NaN or infinite inputs")
        if arrays and len(split.x) and task in RECONSTRUCTION_TASKS:
            low, high = float(split.x.min()), float(split.x.max())
            if low < 0 or high > 1:
                raise ConfigError(
                    f"{name} inputs of {config.dataset!r} must be pixels in [0, 1] for model "
                    f"{config.model!r} (its outputs are sigmoids), found {low:g}..{high:g}; "
                    "scale them, e.g. x / 255"
                )
    if config.augment and dataset.train.x.ndim != 4:
        raise ConfigError(
            f"augment needs images (batch, height, width, channels); dataset {config.dataset!r} "
            f"has inputs of shape {dataset.train.x.shape}"
        )
    if config.patience is not None and not len(dataset.validation.x):
        raise ConfigError(
            f"patience {config.patience} needs a validation split and dataset "
            f"{config.dataset!r} has none; set patience to 0 (--patience 0) to train every "
            "epoch without early stopping, or add validation data (an image folder's val/)"
        )


def dataset_for_model(dataset: Dataset, model: str) -> Dataset:
    """`dataset` as model `model` trains on it: a model that reconstructs its input takes any
    images (`(N, height, width, channels)`), whatever their labels are for."""
    task = models.task(model)
    if task in RECONSTRUCTION_TASKS and dataset.train.x.ndim == 4:
        return dataset._replace(task=task)
    return dataset


class Preempted(Exception):
    """The run got SIGTERM (or reached `stop_after_steps`), saved a checkpoint at `step` and
    stopped; `--resume` continues it."""

    def __init__(self, step: int, directory: str, by_signal: bool = True):
        cause = "by SIGTERM" if by_signal else "as asked"
        super().__init__(f"stopped {cause} after step {step}; checkpoint saved in {directory}")
        self.step = step


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def train_and_evaluate(
    config: TrainConfig,
    workdir: str,
    *,
    log: Callable[[str], None] = print,
    verbose: bool = True,
    progress: bool | None = None,
    plot: bool = False,
    resume: bool = False,
    stop_after_steps: int | None = None,
    parallel: str | DataParallel = "sharding",
    overwrite: bool = False,
    dataset: Dataset | None = None,
    tensorboard: bool = False,
    data_workers: int = 0,
) -> dict[str, Any]:
    """Trains `config.model` on `config.dataset`, evaluates on the test split, writes metrics.

    Writes `workdir/metrics.jsonl` (one line per epoch, as it ends), checkpoints in
    `workdir/checkpoints` (every `config.checkpoint_every` steps and at every epoch's end),
    `workdir/metrics.json` (the returned summary) and with `plot` `curves.png` and
    `confusion.png` (a classifier's), or `reconstructions.png` (test inputs above their
    reconstructions) and for a VAE `samples.png` (decoded from its prior), or a seq2seq model's
    `attention.png` (its greedy decoder's attention on test examples). With early stopping
    (`config.patience`) the test metrics are those of the best validation epoch's parameters.
    With `tensorboard`, each epoch's scalars also go to `workdir/tensorboard`
    (`zoo.training.tensorboard`).

    Args:
      log: where progress lines go.
      verbose: False logs only the test line.
      progress: a progress bar per epoch; None: when stderr is a terminal and `verbose`.
      resume: continue from the latest readable checkpoint in `workdir` (an error when there is
        none). Without it, an unfinished run in `workdir` with the same config is resumed too,
        one with another config is refused, and so is a finished run unless `overwrite`.
      stop_after_steps: save and stop (raising `Preempted`) after this many steps of this call,
        for runs cut into chunks by a scheduler's time limit.
      parallel: 'sharding' (jit over a mesh of every device), 'pmap' or 'none' (one device), or
        a `DataParallel` layout. In a multi-process run only process 0 logs and writes metrics.
      overwrite: replace what a previous run left in `workdir` (finished or not).
      dataset: train on these arrays (a `zoo.data.Dataset`) instead of loading
        `config.dataset`, which then only names them in the run's files.
      data_workers: processes that read (decode, gather) training batches ahead of the steps,
        through grain (`zoo.data.streaming`); 0 reads them in this process. The batches are
        the same either way.

    What a trained model needs to be used on new data (the input shape, class names, vocabulary,
    standardisation statistics) goes to `workdir/dataset.json`.

    The run holds `workdir`'s lock (`zoo.training.workdir.claim`) from its first write to its
    return: a second run into the same directory fails at once.

    Raises:
      WorkdirError: when another run holds `workdir`, or it holds a finished run.
      Preempted: on SIGTERM or after `stop_after_steps`, once a checkpoint is saved.
      NonFiniteError: after `config.max_bad_steps` consecutive non-finite steps.
      CheckpointError: when a checkpoint cannot be written, or none can be read on resume.
    """
    if stop_after_steps is not None and stop_after_steps < 1:
        raise ConfigError(f"stop_after_steps must be >= 1, got {stop_after_steps}")
    if plot:
        plots.require_matplotlib()
    if tensorboard:
        tensorboard_lib.require_tensorboardx()
    if data_workers < 0:
        raise ConfigError(f"data_workers must be >= 0, got {data_workers}")
    if data_workers:
        try:
            require_grain()
        except ImportError as error:
            raise ConfigError(f"--data-workers {data_workers}: {error}") from None
    with workdir_lib.claim(workdir):
        return _train_and_evaluate(
            config,
            dataset,
            workdir,
            log=log,
            verbose=verbose,
            progress=progress,
            plot=plot,
            resume=resume,
            stop_after_steps=stop_after_steps,
            parallel=parallel,
            overwrite=overwrite,
            tensorboard=tensorboard,
            data_workers=data_workers,
        )


def load_dataset(config: TrainConfig, workdir: str | None, log: Callable[[str], None]) -> Dataset:
    """`config.dataset` read with its options; an image folder caches its decoded pixels in
    `workdir/cache` (with no `workdir`, nowhere)."""
    options = config.data_options()
    if config.dataset == "images":
        cache_dir = None if workdir is None else os.path.join(workdir, "cache")
        options |= {"cache_dir": cache_dir, "log": log}
        if jax.process_count() > 1:  # each process checks its share of the files at load
            options |= {"shard": (jax.process_index(), jax.process_count()), "combine": _summed}
    return data.load(
        config.dataset,
        seed=config.seed,
        path=config.data_path,
        task=models.task(config.model),
        **options,
    )


def _summed(rows: np.ndarray) -> np.ndarray:
    """`rows` summed over the processes of a multi-process run."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(rows)).sum(0)


def initialize_from_run(
    state: TrainState, config: TrainConfig, log: Callable[[str], None] = print
) -> TrainState:
    """`state` started from `config.init_from`: a run directory, or 'pretrained' for the
    weights shipped for `config.model` (`zoo.pretrained`)."""
    from zoo.trained import load  # zoo.trained builds on this module
    from zoo.weights import pretrained

    source = config.init_from
    trained = pretrained(config.model) if source == "pretrained" else load(source)
    state, fresh = initialize_from(
        state, trained.variables["params"], trained.variables.get("batch_stats", {})
    )
    log(
        f"initialised from {source} (step {trained.step})"
        + (f"; fresh for a new shape: {', '.join(fresh)}" if fresh else "")
    )
    return state


def describe_dataset(config: TrainConfig, dataset: Dataset) -> dict[str, Any]:
    """What `dataset.json` holds: how to feed a model trained on `dataset` new inputs."""
    return {
        "dataset": config.dataset,
        "data_path": None if config.data_path is None else os.path.abspath(config.data_path),
        "task": dataset.task,
        "input_shape": list(dataset.input_shape),
        "input_dtype": str(np.dtype(dataset.train.x.dtype)),
        "num_classes": dataset.num_classes,
        "class_names": None if dataset.class_names is None else list(dataset.class_names),
        "vocab": dataset.vocab,
        "stats": dataset.stats,
        "variable_length": dataset.train.lengths is not None,
        "sizes": {name: len(getattr(dataset, name).x) for name in ("train", "validation", "test")},
    }


def _train_and_evaluate(
    config,
    dataset,
    workdir,
    *,
    log,
    verbose,
    progress,
    plot,
    resume,
    stop_after_steps,
    parallel,
    overwrite,
    tensorboard,
    data_workers,
) -> dict[str, Any]:
    if dataset is None:
        dataset = load_dataset(config, workdir, log)
    dataset = dataset_for_model(dataset, config.model)
    check_dataset(dataset, config)
    monitor = config.monitor or default_monitor(dataset.task)
    check_monitor(monitor, dataset.task)
    layout = parallel_lib.create(parallel) if isinstance(parallel, str) else parallel
    layout.check_batch_size(config.batch_size)
    model = layout.prepare_model(build_model(config, dataset))
    steps_per_epoch = data.num_batches(len(dataset.train.x), config.batch_size)
    state = create_train_state(
        model, config, dataset.train.x[:1], dataset.task, steps_per_epoch=steps_per_epoch
    )
    if config.init_from is not None:
        state = initialize_from_run(state, config, log if verbose else lambda _: None)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    state = layout.put(state)
    primary = jax.process_index() == 0
    if not primary:
        log = lambda _: None  # noqa: E731 - one process speaks for all
    show = log if verbose else lambda _: None
    show_bar = primary and (progress if progress is not None else verbose and on_terminal())
    show(
        f"{config.model}: {num_params:,} params | {config.dataset}: {len(dataset.train.x)} train, "
        f"{len(dataset.validation.x)} validation, {len(dataset.test.x)} test | "
        f"{steps_per_epoch} steps/epoch | {layout.name} over {layout.num_devices} device(s)"
        + (f", {jax.process_count()} processes" if jax.process_count() > 1 else "")
    )

    unknown = (dataset.stats or {}).get("unknown_characters")
    if unknown:
        show(
            f"{unknown:,} validation and test characters are not in the training text's "
            "vocabulary; they are read as its unknown symbol"
        )
    has_validation = len(dataset.validation.x) > 0
    checkpoints, resume = open_checkpoints(
        workdir, config, monitor if has_validation else None, resume, log, overwrite
    )
    if primary:
        write_json(os.path.join(workdir, "dataset.json"), describe_dataset(config, dataset))
    run = RunState(state, layout, stopper=EarlyStopping(monitor, config.patience, config.min_delta))
    events = None
    if config.patience is not None:
        run.best = _snapshot(state)
    try:
        if resume:
            run = restore_run(checkpoints, run, config, log, steps_per_epoch)
            if run.finished:
                show(f"resumed the finished run at step {run.step}; {_why_finished(run, config)}")
            else:
                show(f"resumed from step {run.step} (epoch {run.step // steps_per_epoch + 1})")
        history_path = os.path.join(workdir, "metrics.jsonl")
        if primary:
            write_jsonl(history_path, run.history)
        if tensorboard and primary:
            events = tensorboard_lib.ScalarWriter(workdir, resumed_at=run.step)
            schedule = create_schedule(config, steps_per_epoch)
        start = time.perf_counter()
        reader = StepReader(
            dataset.train,
            config.batch_size,
            seed=config.seed,
            steps_per_epoch=steps_per_epoch,
            shard=layout.shard(),
            bucket=config.bucket_by_length,
            per_step_targets=dataset.task == "tag",
        )
        last_step = config.epochs * steps_per_epoch
        with (
            TerminationGuard() as guard,
            BatchStream(reader, run.step, last_step, data_workers) as stream,
        ):
            if stop_after_steps is not None:
                guard.stop_at_step = run.step + stop_after_steps
            first_epoch = run.step // steps_per_epoch + 1
            for epoch in range(first_epoch, config.epochs + 1):
                if run.finished:
                    break
                record = _train_epoch(
                    run, stream, config, epoch, steps_per_epoch, show_bar, checkpoints, guard
                )
                if has_validation:
                    val = evaluate(
                        run.state,
                        dataset.validation,
                        config.batch_size,
                        dataset.num_classes,
                        layout,
                    )
                    record |= {f"val_{k}": v for k, v in val.items() if k != "confusion_matrix"}
                    if run.stopper.update(epoch, record[monitor]) and run.best is not None:
                        run.best = _snapshot(run.state)
                run.history.append(record)
                if primary:
                    append_jsonl(history_path, record)
                if events is not None:  # the rate of the epoch's last step
                    events.write(record, run.step, float(schedule(max(run.step - 1, 0))))
                shown = " | ".join(
                    f"{k} {v:.4f}"
                    for k, v in record.items()
                    if k not in ("epoch", "examples_per_second")
                )
                show(
                    f"epoch {epoch:3d}/{config.epochs} | {shown} | "
                    f"{record['examples_per_second']:,.0f} ex/s"
                )
                if run.stopper.should_stop:
                    show(
                        f"early stopping: no {monitor} improvement over {config.min_delta} for "
                        f"{config.patience} epochs; restoring epoch {run.stopper.best_epoch} "
                        f"({monitor} {run.stopper.best:.4f})"
                    )
                run.finished = run.stopper.should_stop or epoch == config.epochs
                metrics = {monitor: record[monitor]} if has_validation else None
                save_checkpoint(checkpoints, run, config, metrics)
        train_seconds = time.perf_counter() - start
    finally:
        checkpoints.close()
        if events is not None:
            events.close()
    state = run.state
    restored = run.best is not None and run.stopper.best_epoch > 0
    if restored:
        state = state.replace(params=run.best[0], batch_stats=run.best[1])

    test = evaluate_test(state, dataset, config, layout)
    if test:
        shown = " | ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
        log("test | " + shown)
    else:
        kept = "validation" if has_validation else "training"
        log(
            f"test | skipped: dataset {config.dataset!r} has no test examples; metrics.json "
            f"holds the {kept} metrics"
        )
    history = run.history
    results = {
        "model": config.model,
        "dataset": config.dataset,
        "task": dataset.task,
        "epochs": len(history),
        "steps": run.step,
        "resumed_from_step": run.resumed_at if resume else None,
        "skipped_steps": int(layout.fetch(state.skipped_steps)),
        "monitor": monitor,
        "monitor_value": run.stopper.best if restored else history[-1].get(monitor),
        "best_epoch": run.stopper.best_epoch,
        "num_params": num_params,
        "dtype": config.dtype,
        **returned_validation_metrics(history, run.stopper.best_epoch if restored else None),
        "test_examples": len(dataset.test.x),
        **test,
        "train_seconds": train_seconds,
        "examples_per_second": (run.step - run.resumed_at) * config.batch_size / train_seconds,
        "history": history,
        "config": config.to_dict(),
        "parallel": layout.name,
        "devices": [str(d) for d in layout.devices],
        "processes": jax.process_count(),
        "jax_version": jax.__version__,
    }
    if not primary:
        return results
    write_json(os.path.join(workdir, "metrics.json"), results)
    if plot:
        plots.plot_curves(
            history, os.path.join(workdir, "curves.png"), best_epoch=run.stopper.best_epoch
        )
        if "test_confusion_matrix" in test:
            plots.plot_confusion(
                test["test_confusion_matrix"], os.path.join(workdir, "confusion.png")
            )
        if dataset.task in RECONSTRUCTION_TASKS and len(dataset.test.x):
            variables = layout.fetch({"params": state.params, "batch_stats": state.batch_stats})
            plot_images(model, variables, dataset.test, config.seed, workdir)
        if dataset.task == "seq2seq" and len(dataset.test.x):
            plot_attention(model, layout.fetch({"params": state.params}), dataset, workdir)
    return results


def evaluate_test(
    state: TrainState, dataset: Dataset, config: TrainConfig, layout: DataParallel
) -> dict[str, Any]:
    """`test_`-prefixed metrics of `state` on `dataset.test`, with the task's baseline; empty
    when the dataset has no test examples (an image folder without `test/`, a short text)."""
    if not len(dataset.test.x):
        return {}
    metrics = evaluate(state, dataset.test, config.batch_size, dataset.num_classes, layout)
    test = {f"test_{k}": v for k, v in metrics.items()}
    if dataset.task == "regress":
        test["naive_mse"] = data.naive_forecast_mse(dataset.test)
    if dataset.task == "tag":
        test["majority_accuracy"] = majority_tag_accuracy(dataset.train, dataset.test)
    if dataset.task in RECONSTRUCTION_TASKS:
        test["mean_image_mse"] = mean_image_mse(dataset.train, dataset.test)
    return test


def returned_validation_metrics(
    history: list[dict[str, Any]], best_epoch: int | None
) -> dict[str, float]:
    """The `val_` metrics of the parameters a run returns: those of `best_epoch` (early
    stopping restored it), else of the last epoch; empty without a validation split."""
    if not history:
        return {}
    epoch = best_epoch or history[-1]["epoch"]
    record = next(record for record in history if record["epoch"] == epoch)
    return {k: v for k, v in record.items() if k.startswith("val_")}


def plot_images(model, variables: dict[str, Any], test: Split, seed: int, workdir: str) -> None:
    """`reconstructions.png`: the first 16 test inputs above their reconstructions; and for a
    VAE `samples.png`: 64 images decoded from its prior, drawn from `seed`."""
    x = np.asarray(test.x[np.arange(min(16, len(test.x)))])
    variables = {name: tree for name, tree in variables.items() if tree}
    reconstructions = np.asarray(models.reconstruct(model, variables, x))
    plots.plot_reconstructions(x, reconstructions, os.path.join(workdir, "reconstructions.png"))
    if isinstance(model, models.VAE):
        samples = models.generate(model, variables, jax.random.key(seed), 64)
        plots.plot_samples(np.asarray(samples), os.path.join(workdir, "samples.png"))


def plot_attention(model, variables: dict[str, Any], dataset: Dataset, workdir: str) -> None:
    """`attention.png`: the greedy decoder's attention over the first 4 test sources, labelled
    with the dataset's source and target tokens (ids where it names none)."""
    test = dataset.test
    rows = np.arange(min(4, len(test.x)))
    x = np.asarray(test.x[rows])
    lengths = None if test.lengths is None else np.asarray(test.lengths[rows])
    tokens, weights = models.greedy_decode(model, variables, x, lengths, max_length=test.y.shape[1])
    source_names = dataset.vocab or [str(i) for i in range(model.vocab_size)]
    target_names = dataset.class_names or [str(i) for i in range(dataset.num_classes)]
    grids, sources, outputs = [], [], []
    for row, decoded in enumerate(np.asarray(tokens)):
        steps = x.shape[1] if lengths is None else int(lengths[row])
        ended = np.flatnonzero(decoded == EOS)
        count = int(ended[0]) + 1 if len(ended) else len(decoded)  # up to and including EOS
        grids.append(np.asarray(weights[row, :count, :steps], np.float32))
        sources.append([source_names[i] for i in x[row, :steps]])
        outputs.append([target_names[i] for i in decoded[:count]])
    plots.plot_attention(grids, sources, outputs, os.path.join(workdir, "attention.png"))


@dataclasses.dataclass
class RunState:
    """What the loop carries between steps and epochs, and what a checkpoint holds."""

    state: TrainState  # laid out on devices by `layout`
    layout: DataParallel
    stopper: EarlyStopping
    best: tuple[Any, Any] | None = None  # (params, batch_stats) of the best epoch
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    step: int = 0  # counted on the host, so reading it never waits for the device
    resumed_at: int = 0
    finished: bool = False


def _train_epoch(run, stream, config, epoch, steps_per_epoch, show_bar, checkpoints, guard):
    """Trains from `run.step` to the end of `epoch` on the run's `stream` of batches, saving
    every `checkpoint_every` steps and on SIGTERM; returns the epoch's record of train
    metrics."""
    epoch_start = time.perf_counter()
    done = run.step - (epoch - 1) * steps_per_epoch  # > 0 when resuming mid-epoch
    layout = run.layout
    batches = itertools.islice(stream, steps_per_epoch - done)
    with EpochProgress(
        epoch, config.epochs, steps_per_epoch - done, config.batch_size, enabled=show_bar
    ) as bar:
        in_flight = InFlight()
        for batch in prefetch(batches, layout.put_batch):
            run.state, batch_metrics = layout.train_step(run.state, batch)
            run.step += 1
            bar.step(batch_metrics)
            in_flight.add(batch_metrics)
            if guard.should_stop(run.step):
                save_checkpoint(checkpoints, run, config)
                raise Preempted(run.step, checkpoints.directory, run.step != guard.stop_at_step)
            if config.checkpoint_every and run.step % config.checkpoint_every == 0:
                if run.step % steps_per_epoch:  # epoch ends are saved by the loop, with metrics
                    save_checkpoint(checkpoints, run, config)
    check_finite_steps(run, config)
    record = {"epoch": epoch} | {f"train_{k}": v for k, v in summarize_metrics(bar.metrics).items()}
    record["examples_per_second"] = (
        (steps_per_epoch - done) * config.batch_size / (time.perf_counter() - epoch_start)
    )
    return record


def _snapshot(state: TrainState) -> tuple[Any, Any]:
    """Copies of the params and batch stats: train_step donates the state's own buffers."""
    return jax.tree.map(jnp.copy, (state.params, state.batch_stats))


def checkpoint_tree(state: TrainState, best: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint holds of `state` (and of the best epoch's params and batch stats)."""
    tree = {
        "params": state.params,
        "opt_state": state.opt_state,
        "batch_stats": state.batch_stats,
        "step": state.step,
        "key": jax.random.key_data(state.key),
        "skipped_steps": state.skipped_steps,
        "bad_streak": state.bad_streak,
        "loss_scale": state.loss_scale._asdict(),
    }
    if best is not None:
        tree["best"] = {"params": best[0], "batch_stats": best[1]}
    return tree


def _checkpoint_tree(run: RunState) -> dict[str, Any]:
    """One host copy of what a checkpoint holds, whatever the device layout."""
    return run.layout.fetch(checkpoint_tree(run.state, run.best))


def save_checkpoint(
    checkpoints: Checkpointer,
    run: RunState,
    config: TrainConfig,
    metrics: dict[str, float] | None = None,
) -> None:
    """Saves the run at `run.step` (synchronously; errors are fatal)."""
    stopper = run.stopper
    meta = {
        "step": run.step,
        "dtype": config.dtype,
        "finished": run.finished,
        "config": config.to_dict(),
        "history": run.history,
        "stopper": {
            "best": stopper.best if stopper.best_epoch else None,
            "best_epoch": stopper.best_epoch,
            "bad_epochs": stopper.bad_epochs,
        },
        "versions": versions(),
    }
    checkpoints.save(run.step, _checkpoint_tree(run), meta, metrics)


def restore_run(
    checkpoints: Checkpointer,
    run: RunState,
    config: TrainConfig,
    log: Callable[[str], None],
    steps_per_epoch: int,
) -> RunState:
    """`run` continued from the latest readable checkpoint, to `config.epochs`: a finished run
    resumed with more epochs (or a larger or no patience, when it stopped early) trains on."""
    restored = checkpoints.restore_latest(_checkpoint_tree(run), warn=log)
    if restored is None:
        raise ConfigError(f"resume: no checkpoint in {checkpoints.directory}")
    tree, meta = restored
    trained_in = meta["config"].get("dtype", "float32")
    if trained_in != config.dtype:
        raise ConfigError(
            f"dtype: the run in {os.path.dirname(checkpoints.directory)} trains in {trained_in}, "
            f"not {config.dtype}; resume it in {trained_in} or start another --out"
        )
    check_epochs(meta["config"], config, int(meta["step"]), steps_per_epoch)
    tree = run.layout.put(tree)
    state = run.state.replace(
        params=tree["params"],
        opt_state=tree["opt_state"],
        batch_stats=tree["batch_stats"],
        step=tree["step"],
        key=jax.random.wrap_key_data(tree["key"]),
        skipped_steps=tree["skipped_steps"],
        bad_streak=tree["bad_streak"],
        loss_scale=LossScale(**tree["loss_scale"]),
    )
    stopper = run.stopper
    if meta["stopper"]["best_epoch"]:
        stopper.best = meta["stopper"]["best"]
    stopper.best_epoch = meta["stopper"]["best_epoch"]
    stopper.bad_epochs = meta["stopper"]["bad_epochs"]
    best = (tree["best"]["params"], tree["best"]["batch_stats"]) if "best" in tree else None
    step = int(meta["step"])
    # Not the checkpoint's `finished`: flags given on resume (--epochs, --patience) override.
    finished = stopper.should_stop or step >= config.epochs * steps_per_epoch
    if meta["finished"] and not finished:
        log(f"continuing the finished run at step {step} to {config.epochs} epochs")
    return RunState(
        state,
        run.layout,
        stopper,
        best=best,
        history=list(meta["history"]),
        step=step,
        resumed_at=step,
        finished=finished,
    )


def _why_finished(run: RunState, config: TrainConfig) -> str:
    """Why a resumed run trains no more, and what would make it."""
    if run.stopper.should_stop:
        return (
            f"it stopped early at epoch {run.history[-1]['epoch']} (patience "
            f"{config.patience}); a larger patience, or 0, trains on"
        )
    return f"all its {config.epochs} epochs are trained"


def check_epochs(
    saved: dict[str, Any], config: TrainConfig, step: int, steps_per_epoch: int
) -> None:
    """Refuses a resume whose `config.epochs` differs from the run's `saved` config when the
    result cannot be the run `config` describes: fewer epochs than `step` trained, or a schedule
    that decays over the run's length (restarting it partway)."""
    if config.epochs == saved["epochs"]:
        return
    trained = -(-step // steps_per_epoch)  # an epoch begun counts
    if config.epochs < trained:
        raise ConfigError(
            f"epochs {config.epochs}: the run has trained {trained} epochs (step {step}); "
            f"resume it with epochs >= {trained}, or start another run"
        )
    schedules = {saved.get("schedule", "constant"), config.schedule}
    spanning = sorted(schedules & set(RUN_LENGTH_SCHEDULES))
    if spanning:
        raise ConfigError(
            f"epochs {config.epochs}: schedule {spanning[0]!r} decays the learning rate over "
            f"all of a run's epochs ({saved['epochs']} in the saved run), so changing them on "
            "resume would jump the rate partway and train neither run. Start a new run with "
            f"epochs {config.epochs}, or fine-tune this one's weights with init_from (--init-from)"
        )


def check_finite_steps(run: RunState, config: TrainConfig) -> None:
    """Stops the run once `max_bad_steps` consecutive steps were non-finite (a host sync)."""
    streak = int(run.layout.fetch(run.state.bad_streak))
    if streak >= config.max_bad_steps:
        first = run.step - streak + 1
        raise NonFiniteError(
            f"{config.max_bad_steps} consecutive steps ({first}..{first + config.max_bad_steps - 1}"
            f") had a non-finite loss or gradient; they were skipped and nothing non-finite was "
            f"saved. Lower --lr, add --clip-norm, or find the first NaN with --debug-nans"
        )


def write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    """Writes `records` as JSON lines atomically (the history a resumed run starts from)."""
    _write_atomically(path, "".join(json.dumps(record) + "\n" for record in records))


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Appends one JSON line and flushes it to disk, so a killed run keeps every finished epoch."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON atomically: a reader sees the old file or the new one, never half."""
    _write_atomically(path, json.dumps(obj, indent=2))


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
