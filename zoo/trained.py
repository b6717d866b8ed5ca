"""Use a trained run: `zoo.load(run_dir)` gives the model, its variables and what feeds it.

    trained = zoo.load("runs/cnn")                   # the early-stopped best parameters
    probabilities = trained.predict(images)          # (N, classes); an autoencoder's: (N, H, W, C)
    logits = trained.model.apply(trained.variables, images)
    text = zoo.load("runs/charlm").sample("def ", length=200)
    tags = zoo.load("runs/tagger").tag("thequickbrownfox")  # (16, tags) per character
    words = zoo.load("runs/seq2seq").translate(["4217"])  # ["four thousand two hundred ..."]

A run directory holds what this needs: its checkpoints (config, parameters) and `dataset.json`
(input shape, class names, vocabulary, standardisation statistics), written by
`train_and_evaluate`.
"""

import dataclasses
import functools
import itertools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import data, models
from zoo.data import RECONSTRUCTION_TASKS, Dataset
from zoo.data import text as text_lib
from zoo.data.splits import Split
from zoo.models.seq2seq import EOS, PAD
from zoo.training.checkpoint import CHECKPOINTS, Checkpointer, CheckpointError
from zoo.training.config import DATA_FIELDS, TrainConfig
from zoo.training.metrics import evaluate
from zoo.training.state import create_train_state, model_for, model_input_shape

WHICH = ("best", "latest")


class RunError(ValueError):
    """A path holds no usable run; the message names it."""


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained model and what it needs to be fed.

    Attributes:
      model: the Flax module; `model.apply(variables, x)` gives its outputs.
      variables: `{"params": ..., ["batch_stats": ...]}`, plain pytrees.
      config: the run's `TrainConfig`.
      dataset: what the run recorded of its data (`dataset.json`): `input_shape`,
        `num_classes`, `class_names`, `vocab`, `stats`, `task`, ...
      step: the checkpoint's step; `which`: 'best' or 'latest' parameters.
    """

    model: nn.Module
    variables: dict[str, Any]
    config: TrainConfig
    dataset: dict[str, Any]
    step: int
    which: str

    @property
    def task(self) -> str:
        return self.dataset["task"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset["input_shape"])

    @property
    def class_names(self) -> tuple[str, ...] | None:
        names = self.dataset.get("class_names")
        return None if names is None else tuple(names)

    def predict(self, x, lengths=None, *, batch_size: int = 256) -> np.ndarray:
        """Class probabilities `(N, classes)` of a classifier, next-token probabilities
        `(N, T, vocab)` of a language model, a forecaster's values `(N, horizon)` in the
        units of its training data (its standardisation undone), or an autoencoder's
        reconstructions `(N, H, W, C)` (a VAE's decoded from its posterior mean)."""
        x = self._checked(x)
        outputs = []
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            part = None if lengths is None else jnp.asarray(lengths[rows])
            outputs.append(np.asarray(_outputs(self.model, self.variables, x[rows], part)))
        if not outputs:  # an empty batch: no rows of what one example's output is
            one = jax.eval_shape(
                functools.partial(_outputs, self.model, self.variables),
                jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype),
                None if lengths is None else jax.ShapeDtypeStruct((1,), jnp.int32),
            )
            outputs = [np.zeros((0, *one.shape[1:]), one.dtype)]
        out = np.concatenate(outputs)
        if self.task in RECONSTRUCTION_TASKS:
            return out
        if self.task == "regress":
            stats = self.dataset.get("stats") or {}
            return out * stats.get("std", 1.0) + stats.get("mean", 0.0)
        return np.asarray(jax.nn.softmax(out, axis=-1))

    def evaluate(self, split: Split, *, batch_size: int | None = None) -> dict[str, Any]:
        """The test metrics of the run's `metrics.json` (without the `test_` prefix) on `split`:
        loss and accuracy, macro-F1 and the confusion matrix, or bpc, or mse.

        Raises:
          ValueError: when a classifier's labels are not in `0..num_classes - 1`.
        """
        if self.task == "classify":
            _check_labels(np.asarray(split.y), self.dataset["num_classes"])
        x = self._checked(split.x[:1])
        state = create_train_state(self.model, self.config, jnp.asarray(x), self.task)
        state = state.replace(
            params=self.variables["params"], batch_stats=self.variables.get("batch_stats", {})
        )
        return evaluate(
            state, split, batch_size or self.config.batch_size, self.dataset["num_classes"]
        )

    def data_config(
        self, dataset: str | None = None, data_path: str | None = None, **data_options: Any
    ) -> TrainConfig:
        """The run's config reading `dataset` from `data_path` (the run's own by default): with
        the run's data options (`TrainConfig.data_options`, and the CSV column it picked itself)
        when the dataset is of the run's kind, and `data_options` on top."""
        config = self.config
        dataset = dataset or config.dataset
        same = dataset == config.dataset
        if same and data_path is None and not data_options:
            return config
        path = config.data_path if same and data_path is None else data_path
        kept = self._data_options() if same else {}
        options = dict.fromkeys(DATA_FIELDS) | kept | data_options
        return TrainConfig.from_dict(
            {**config.to_dict(), **options, "dataset": dataset, "data_path": path}
        )

    def read_data(
        self,
        dataset: str | None = None,
        data_path: str | None = None,
        *,
        workdir: str | None = None,
        **data_options: Any,
    ) -> Dataset:
        """A dataset read as the run read its own (`data_config`), for `evaluate`: a CSV
        standardised with the run's statistics, not the file's; an image folder's pixels cached in
        `workdir/cache`. A classification dataset whose class names are not the run's is
        refused."""
        from zoo.training.loop import load_dataset  # it builds on this module

        config = self.data_config(dataset, data_path, **data_options)
        stats = self.dataset.get("stats") or {}
        if config.dataset == "csv" and "mean" in stats:
            options = config.data_options()
            data.check_source("csv", config.data_path, **options)
            return data.load_csv_series(config.data_path, **options, stats=stats)
        read = load_dataset(config, workdir, log=lambda line: None)
        names = read.class_names
        if read.task == "classify" and names is not None:
            ours = self.class_names or tuple(str(i) for i in range(self.dataset["num_classes"]))
            if tuple(names) != ours:
                raise ValueError(
                    f"{config.data_path or config.dataset} has classes {', '.join(names)}; the "
                    f"run was trained on {', '.join(ours)}: evaluate it on data of the same classes"
                )
        return read

    def _data_options(self) -> dict[str, Any]:
        """How the run read its data, the CSV column it picked itself included."""
        options = self.config.data_options()
        column = (self.dataset.get("stats") or {}).get("column")
        if self.config.dataset == "csv" and column is not None:
            options["column"] = column
        return options

    def export(self, platforms: tuple[str, ...] = ("cpu", "cuda")) -> bytes:
        """The inference function `x -> model outputs` (logits, a forecaster's standardised
        values, or an autoencoder's reconstructions) with the weights inside, serialized by
        `jax.export` for `platforms` with a symbolic batch size (and sequence length, where the
        model takes any): a process without zoo runs it with
        `jax.export.deserialize(data).call(x)` (`.call(x, lengths)` for a model trained on
        sequences of different lengths)."""
        variables = self.variables
        shape = self.input_shape
        dtype = self.dataset.get("input_dtype", "float32")
        any_length = self.dataset.get("variable_length") or self.task == "language"
        dims = "b, t" if any_length else "b"
        symbolic = jax.export.symbolic_shape(dims)
        spec = jax.ShapeDtypeStruct((*symbolic, *shape[len(symbolic) - 1 :]), dtype)
        if self.dataset.get("variable_length"):  # and the sequences' lengths
            infer = jax.jit(lambda x, lengths: self.model.apply(variables, x, lengths))
            specs = (spec, jax.ShapeDtypeStruct(symbolic[:1], jnp.int32))
        else:
            infer = jax.jit(lambda x: _outputs(self.model, variables, x, None))
            specs = (spec,)
        exported = jax.export.export(infer, platforms=platforms)(*specs)
        return bytes(exported.serialize())

    def sample(
        self, prompt: str, length: int = 200, *, temperature: float = 1.0, seed: int = 0
    ) -> str:
        """`length` characters a language model writes after `prompt`."""
        if self.task != "language":
            raise ValueError(f"sample needs a language model; {self.config.model!r} is not one")
        vocab = self.dataset["vocab"]
        unknown = sorted(set(prompt) - set(vocab))
        if unknown:
            raise ValueError(
                f"prompt characters {unknown} are not in the model's vocabulary of {len(vocab)}"
            )
        tokens = text_lib.encode(prompt, vocab)[None, :]
        out = models.sample(
            self.model,
            self.variables,
            jnp.asarray(tokens),
            jax.random.key(seed),
            length=length,
            temperature=temperature,
        )
        return text_lib.decode(np.asarray(out)[0], vocab)

    def tag(self, text: str) -> np.ndarray:
        """Tag probabilities `(len(text), tags)` of each character of `text`, for a tagger
        trained on characters (`--dataset words`); a text longer than the model's sequences is
        tagged in pieces of that length."""
        vocab = self.dataset.get("vocab")
        if self.task != "tag" or not vocab:
            raise ValueError(f"tag needs a tagger of characters; {self.config.model!r} is not one")
        if not text:
            return np.zeros((0, self.dataset["num_classes"]), np.float32)
        unknown = sorted(set(text) - set(vocab))
        if unknown:
            raise ValueError(
                f"characters {unknown} are not in the model's vocabulary of {len(vocab)}"
            )
        tokens = text_lib.encode(text, vocab)
        steps = self.input_shape[0]
        pieces = [tokens[start : start + steps] for start in range(0, len(tokens), steps)]
        x = np.zeros((len(pieces), steps), np.int32)
        for row, piece in enumerate(pieces):
            x[row, : len(piece)] = piece
        lengths = np.array([len(piece) for piece in pieces], np.int32)
        probabilities = self.predict(x, lengths)  # (pieces, steps, tags)
        return np.concatenate([p[:n] for p, n in zip(probabilities, lengths, strict=True)])

    def translate(self, sources: list[str], *, beam_width: int = 1) -> list[str]:
        """A sequence-to-sequence model's output for each source string, read one character
        per source token: greedy decoding (`beam_width` 1) or the best of a beam search, its
        target tokens up to EOS joined by spaces."""
        if self.task != "seq2seq":
            raise ValueError(f"translate needs a seq2seq model; {self.config.model!r} is not one")
        vocab = list(self.dataset["vocab"])
        lookup = {token: i for i, token in enumerate(vocab) if i > EOS}  # no PAD, BOS, EOS
        for source in sources:
            unknown = sorted(set(source) - set(lookup))
            if unknown:
                raise ValueError(
                    f"source {source!r}: characters {unknown} are not in the model's source "
                    f"vocabulary {''.join(sorted(lookup))!r}"
                )
            if not source:
                raise ValueError("an empty source has nothing to translate")
        if not sources:
            return []
        lengths = np.array([len(source) for source in sources], np.int32)
        src = np.full((len(sources), lengths.max()), PAD, np.int32)
        for row, source in enumerate(sources):
            src[row, : len(source)] = [lookup[c] for c in source]
        if beam_width == 1:
            tokens, _ = models.greedy_decode(self.model, self.variables, src, lengths)
        else:
            beams, _ = models.beam_search(
                self.model, self.variables, src, lengths, width=beam_width
            )
            tokens = beams[:, 0]
        names = self.class_names
        return [
            " ".join(names[t] for t in itertools.takewhile(lambda t: t != EOS, row) if t > EOS)
            for row in np.asarray(tokens).tolist()
        ]

    def _checked(self, x) -> np.ndarray:
        x = np.asarray(x)
        shape = self.input_shape
        variable = self.dataset.get("variable_length") or self.task == "language"
        if variable:
            ok = x.ndim == len(shape) + 1 and x.shape[2:] == shape[1:]
        else:
            ok = x.shape[1:] == shape
        if not ok:
            raise ValueError(
                f"{self.config.model} takes inputs of shape (batch, {', '.join(map(str, shape))})"
                f", got {x.shape}"
            )
        dtype = np.dtype(self.dataset.get("input_dtype", "float32"))
        if np.issubdtype(dtype, np.floating) and not np.issubdtype(x.dtype, np.floating):
            pixels = self.dataset.get("dataset") == "images" or x.dtype == np.uint8
            how = (
                "pixels in [0, 1], x.astype(np.float32) / 255"
                if pixels
                else "floats, scaled as its training inputs were"
            )
            raise ValueError(
                f"{self.config.model} takes floating-point inputs, got {x.dtype}: give it {how}"
            )
        return x.astype(dtype)


def read_inputs(
    trained: Trained, paths: list[str], *, column: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """A batch for `trained.predict` from files, and a name for each of its rows: images
    (resized and converted to the model's channels as an image folder's are read for training),
    `.npy` arrays (one example, or a batch), or for a forecaster CSV files whose
    last `window` values of `column` are the input."""
    from zoo.data import images

    shape = trained.input_shape
    examples = []
    for path in paths:
        if path.lower().endswith(images.IMAGE_SUFFIXES):
            if len(shape) != 3:
                raise ValueError(f"{path} is an image; {trained.config.model} takes {shape}")
            examples.append(images.read_image(path, shape)[None])
        elif path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            examples.append(array[None] if array.shape == shape else array)
        elif path.endswith(".csv") and trained.task == "regress":
            examples.append(_csv_window(trained, path, column))
        else:
            raise ValueError(
                f"cannot read {path}: give image files, .npy arrays"
                + (" or CSV files" if trained.task == "regress" else "")
            )
    batch = [trained._checked(example) for example in examples]
    names = [
        path if len(rows) == 1 else f"{path}[{i}]"
        for path, rows in zip(paths, batch, strict=True)
        for i in range(len(rows))
    ]
    return np.concatenate(batch), names


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels go from {labels.min()} up to {labels.max()}; the model has num_classes "
            f"{num_classes}, so it scores labels 0..{num_classes - 1} only"
        )


def _csv_window(trained: Trained, path: str, column: str | None) -> np.ndarray:
    """The last `window` values of a CSV file, read as the run read its own (its column, time
    column and missing-value handling) and standardised with the run's statistics."""
    from zoo.data import series

    shape, stats, read = trained.input_shape, trained.dataset["stats"], trained._data_options()
    values = series.load_csv_values(
        path,
        column=column or read.get("column"),
        time_column=read.get("time_column"),
        missing=read.get("missing", "error"),
    )
    if len(values) < shape[0]:
        raise ValueError(f"{path} has {len(values)} values; the model reads {shape[0]}")
    window = (values[-shape[0] :] - stats["mean"]) / stats["std"]
    return window.reshape(1, *shape)


@functools.partial(jax.jit, static_argnums=0)
def _outputs(model, variables, x, lengths):
    if lengths is not None:
        return model.apply(variables, x, lengths)
    outputs = model.apply(variables, x)
    return outputs.reconstruction if isinstance(outputs, models.VAEOutput) else outputs


def load(path: str | os.PathLike, *, which: str = "best") -> Trained:
    """The model trained in run directory `path` (or in one of its checkpoint directories,
    `path/checkpoints/<step>`).

    Args:
      which: 'best', the parameters of the best validation epoch where the run stopped early
        (otherwise its last), or 'latest', those of the newest checkpoint.

    Raises:
      RunError: when `path` holds no run, or no `dataset.json`.
      CheckpointError: when its checkpoint cannot be read.
    """
    if which not in WHICH:
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    run_dir, step = _locate(os.path.abspath(os.fspath(path)))
    described = _read_dataset_json(run_dir)
    checkpoints = Checkpointer(run_dir)
    try:
        steps = checkpoints.steps()
        if not steps:
            raise RunError(f"{run_dir} holds no checkpoint: the run saved none before it ended")
        step = steps[-1] if step is None else step
        saved = checkpoints.read_meta(step)
        config = TrainConfig.from_dict(saved["config"])
        input_shape = model_input_shape(
            config.model, described["input_shape"], bool(described.get("variable_length"))
        )
        vocab_size = len(described["vocab"]) if described.get("vocab") else None
        model = model_for(config, described["num_classes"], input_shape, vocab_size)
        like = _like(model, config, described, saved.get("leaves", {}))
        tree, meta = checkpoints.restore(step, like)
    finally:
        checkpoints.close()
    source = tree["best"] if which == "best" and "best" in tree else tree
    variables = {"params": source["params"]}
    if source["batch_stats"]:
        variables["batch_stats"] = source["batch_stats"]
    return Trained(model, variables, config, described, int(meta["step"]), which)


def _locate(path: str) -> tuple[str, int | None]:
    """The run directory of `path`, and the step when `path` is one checkpoint."""
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINTS and os.path.basename(path).isdigit():
        return os.path.dirname(parent), int(os.path.basename(path))
    if not os.path.isdir(path):
        raise RunError(f"{path} does not exist")
    if not os.path.isdir(os.path.join(path, CHECKPOINTS)):
        raise RunError(f"{path} holds no run (no {CHECKPOINTS}/ directory); pass a train.py --out")
    return path, None


def _read_dataset_json(run_dir: str) -> dict[str, Any]:
    filename = os.path.join(run_dir, "dataset.json")
    try:
        with open(filename) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(
            f"{run_dir} has no dataset.json (the run predates it); retrain it to use it"
        ) from None
    except json.JSONDecodeError as error:
        raise RunError(f"{filename} is not valid JSON: {error}") from None


def _like(model, config, described, leaves) -> dict[str, Any]:
    """A tree of the checkpoint's structure (`leaves`, as its meta lists them), shapes and
    dtypes, to restore into."""
    from zoo.training.loop import checkpoint_tree

    example = np.zeros((1, *described["input_shape"]), described.get("input_dtype", "float32"))
    state = create_train_state(model, config, jnp.asarray(example), described["task"])
    has_best = any(name.startswith("['best']") for name in leaves)
    best = (state.params, state.batch_stats) if has_best else None
    return jax.device_get(checkpoint_tree(state, best))


__all__ = ["WHICH", "CheckpointError", "RunError", "Trained", "load", "read_inputs"]
