"""Train a zoo model: `python train.py --model cnn --dataset digits --epochs 20 --out runs/cnn`.

A thin CLI over `zoo.training`: parse and validate flags into a `TrainConfig`, log the devices,
run. `python train.py search --space lr=1e-3,3e-3 ...` runs a hyperparameter search whose trials
are such runs. Bad flags or values exit with status 2 and one line naming the flag.
"""

import argparse
import ast
import dataclasses
import json
import os
import re
import sys

import jax
import numpy as np

import zoo
from zoo import data, models, runtime
from zoo.data import MISSING, RECONSTRUCTION_TASKS
from zoo.runtime import reuse_freed_memory
from zoo.trained import WHICH, read_inputs
from zoo.training import ConfigError, TrainConfig, train_and_evaluate
from zoo.training.checkpoint import CHECKPOINTS, CheckpointError, saved_config
from zoo.training.config import (
    AUGMENTATIONS,
    DATA_FIELDS,
    DTYPES,
    MONITORS,
    OPTIMIZERS,
    PRESETS,
    REGULARIZE,
    SCHEDULES,
)
from zoo.training.loop import NonFiniteError, Preempted
from zoo.training.parallel import (
    PARALLEL,
    SPLIT_WIDTH,
    default_cpu_devices,
    initialize_distributed,
)
from zoo.training.search import METHODS, format_table, load_space, parse_space_args, run_search


def _names(text: str) -> tuple[str, ...]:
    return () if text == "none" else tuple(name.strip() for name in text.split(",") if name)


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(n) for n in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH, got {text!r}") from None
    return height, width


# (config field, flag, argparse options); every flag defaults to None, meaning "the preset".
_CONFIG_FLAGS = [
    ("dataset", "--dataset", {"choices": data.DATASETS, "help": "dataset"}),
    (
        "data_path",
        "--data-path",
        {
            "metavar": "PATH",
            "help": "images: a folder of class folders (or train/, val/, test/ of them); text: a "
            "UTF-8 file; csv: a CSV file; arrays: an .npz or .jsonl; mnist: mnist.npz or IDX files",
        },
    ),
    (
        "image_size",
        "--image-size",
        {"type": _size, "metavar": "H,W", "help": "images: resize to H,W (default: their own)"},
    ),
    (
        "channels",
        "--channels",
        {"type": int, "choices": (1, 3), "help": "images: 1 gray or 3 RGB (default: the images')"},
    ),
    (
        "skip_bad_files",
        "--skip-bad-files",
        {"action": "store_const", "const": True, "help": "images: skip unreadable files"},
    ),
    ("column", "--column", {"metavar": "NAME", "help": "csv: the column to forecast"}),
    ("time_column", "--time-column", {"metavar": "NAME", "help": "csv: sort rows by this column"}),
    (
        "missing",
        "--missing",
        {"choices": MISSING, "help": "csv: what empty or NaN cells do (default error)"},
    ),
    (
        "bucket_by_length",
        "--bucket-by-length",
        {
            "action": "store_const",
            "const": True,
            "help": "sequences: batch similar lengths together, each batch cut to its longest",
        },
    ),
    ("epochs", "--epochs", {"type": int, "help": "passes over the training split"}),
    ("batch_size", "--batch-size", {"type": int, "help": "examples per step"}),
    ("optimizer", "--optimizer", {"help": ", ".join(OPTIMIZERS)}),
    ("learning_rate", "--lr", {"type": float, "help": "(peak) learning rate"}),
    ("momentum", "--momentum", {"type": float, "help": "for sgd and rmsprop"}),
    (
        "nesterov",
        "--nesterov",
        {
            "action": "store_const",
            "const": True,
            "help": "Nesterov momentum (NAdam for adam/adamw)",
        },
    ),
    ("schedule", "--schedule", {"help": ", ".join(SCHEDULES)}),
    ("warmup_steps", "--warmup-steps", {"type": int, "help": "linear warmup of warmup_cosine"}),
    (
        "decay_rate",
        "--decay-rate",
        {"type": float, "help": "exponential: lr factor per epoch"},
    ),
    ("clip_norm", "--clip-norm", {"type": float, "help": "clip gradients to this global norm"}),
    ("l1", "--l1", {"type": float, "help": "L1 penalty l1*sum|w| in the loss"}),
    ("l2", "--l2", {"type": float, "help": "L2 penalty l2*sum(w^2) in the loss"}),
    (
        "weight_decay",
        "--weight-decay",
        {"type": float, "help": "decoupled weight decay (adamw: default 1e-4)"},
    ),
    (
        "regularize",
        "--regularize",
        {"help": " or ".join(REGULARIZE) + ": weights that l1/l2/weight decay touch"},
    ),
    (
        "augment",
        "--augment",
        {
            "type": _names,
            "metavar": "NAMES",
            "help": f"comma list of {', '.join(AUGMENTATIONS)}, or none",
        },
    ),
    ("patience", "--patience", {"type": int, "help": "early stopping: epochs w/o gain (0: off)"}),
    ("min_delta", "--min-delta", {"type": float, "help": "early stopping: smallest improvement"}),
    (
        "monitor",
        "--monitor",
        {"help": ", ".join(MONITORS) + " (default val_accuracy, or val_loss for non-classifiers)"},
    ),
    (
        "max_bad_steps",
        "--max-bad-steps",
        {"type": int, "help": "stop after this many non-finite steps in a row"},
    ),
    (
        "checkpoint_every",
        "--checkpoint-every",
        {"type": int, "help": "checkpoint every N steps, besides epoch ends"},
    ),
    (
        "keep_checkpoints",
        "--keep-checkpoints",
        {"type": int, "help": "latest checkpoints kept"},
    ),
    ("seed", "--seed", {"type": int, "help": "data split, order, init, dropout, augmentation"}),
    (
        "init_from",
        "--init-from",
        {
            "metavar": "RUN_DIR",
            "help": "fine-tune: start from a run's parameters, or 'pretrained' (zoo's own)",
        },
    ),
    (
        "dtype",
        "--dtype",
        {
            "choices": DTYPES,
            "help": "the computation's dtype; params, optimizer state and loss stay float32, "
            "float16 adds dynamic loss scaling (default float32)",
        },
    ),
]
# Exit status of a run stopped before its end (SIGTERM or --stop-after-steps) once its checkpoint
# is saved: 128 + SIGTERM, what a scheduler expects of a terminated job.
PREEMPTED = 143
FAILED = 1  # the run failed: a checkpoint could not be written, or training diverged
# Config fields and the flags that set them, for error messages that name what the user typed.
_FLAGS = {
    "model": "--model",
    "model_options": "--model-option",
    "coordinator": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
    "data_workers": "--data-workers",
} | {field: flag for field, flag, _ in _CONFIG_FLAGS}


# `--help` in groups; a flag's group by its destination.
_GROUPS = {
    "model and data": (
        "model model_option dataset data_path image_size channels skip_bad_files column "
        "time_column missing bucket_by_length data_workers"
    ),
    "optimisation": (
        "epochs batch_size optimizer learning_rate momentum nesterov schedule warmup_steps "
        "decay_rate clip_norm dtype seed"
    ),
    "regularisation and early stopping": (
        "l1 l2 weight_decay regularize augment patience min_delta monitor"
    ),
    "runs and checkpoints": (
        "out resume overwrite stop_after_steps checkpoint_every keep_checkpoints init_from "
        "max_bad_steps debug_nans"
    ),
    "devices and hosts": "parallel cpu_devices coordinator num_processes process_id init_timeout",
    "output": "quiet plot tensorboard show_config",
    "search": "space space_file method trials storage study",
}
_GROUP_OF = {dest: title for title, dests in _GROUPS.items() for dest in dests.split()}
_COMMANDS = """commands:
  train.py [FLAGS]                 train (this page)
  train.py search --space ...      hyperparameter search: trials are runs of these flags
  train.py predict --run DIR ...   a trained run on new inputs
  train.py evaluate --run DIR      a trained run's test metrics, or on another dataset
  train.py export --run DIR --out FILE   jax.export of a trained run, weights inside
each has its own --help."""


def _with_default(field: str, text: str) -> str:
    """`text` with the config field's default, unless it names one itself; a field that a
    preset sets defaults to the model's preset."""
    if "default" in text:
        return text
    default = _CONFIG_DEFAULTS[field]
    if isinstance(default, tuple):
        shown = ",".join(default) or "none"
    else:
        words = {"none": None, "off": False, "on": True}  # by identity: a 0 is not "off"
        shown = next((word for word, value in words.items() if default is value), default)
    if any(field in preset for preset in PRESETS.values()):
        return f"{text} (default: the model's preset, else {shown})"
    return f"{text} (default: {shown})"


_CONFIG_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(TrainConfig)
    if field.default is not dataclasses.MISSING
}


class _Groups:
    """The parser's argument groups, made in `_GROUPS`' order as flags are added."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.groups = {title: parser.add_argument_group(title) for title in _GROUPS}

    def add(self, *flags: str, **options) -> None:
        dest = options.get("dest") or flags[0].lstrip("-").replace("-", "_")
        self.groups[_GROUP_OF[dest]].add_argument(*flags, **options)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_run_flags(groups: _Groups) -> None:
    groups.add("--model", choices=models.names(), help="default: cnn")
    groups.add(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameter, e.g. --model-option features=32,64 (Python literal values)",
    )
    for field, flag, options in _CONFIG_FLAGS:
        groups.add(flag, dest=field, **{**options, "help": _with_default(field, options["help"])})
    groups.add(
        "--parallel",
        choices=PARALLEL,
        default="sharding",
        help="data parallel over every device: jit on a device mesh (sharding, default), pmap, "
        "or one device (none)",
    )
    groups.add(
        "--cpu-devices",
        type=_cpu_devices,
        default="auto",
        metavar="N",
        help="on a CPU, how many JAX devices to split each batch over (auto, default: one per "
        "core for recurrent models, where that is faster, else 1; a count you set in XLA_FLAGS "
        "or JAX_NUM_CPU_DEVICES is kept). Ignored on a GPU or TPU",
    )
    groups.add(
        "--data-workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that read and decode training batches ahead of the steps (grain); "
        "the batches are the same (default 0: read in the training process)",
    )
    env = os.environ.get
    groups.add(
        "--coordinator",
        default=env("JAX_COORDINATOR_ADDRESS"),
        metavar="HOST:PORT",
        help="multi-process run: process 0's address (env JAX_COORDINATOR_ADDRESS)",
    )
    groups.add(
        "--num-processes",
        type=int,
        default=_env_int("JAX_NUM_PROCESSES"),
        help="multi-process run: how many processes (env JAX_NUM_PROCESSES)",
    )
    groups.add(
        "--process-id",
        type=int,
        default=_env_int("JAX_PROCESS_ID"),
        help="multi-process run: this process, 0..N-1 (env JAX_PROCESS_ID)",
    )
    groups.add(
        "--init-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="multi-process run: give up when not every process joined by then (default 120)",
    )
    groups.add(
        "--overwrite",
        action="store_true",
        help="replace what an earlier run left in --out (by default a finished run is refused)",
    )
    groups.add("--quiet", action="store_true", help="no progress bar or epoch lines")
    groups.add("--debug-nans", action="store_true", help="jax_debug_nans: fail at the first NaN")


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["search"]:
        parser = _Parser(
            prog="train.py search",
            usage="train.py search --space NAME=VALUES [--space ...] [FLAGS]",
            description="Hyperparameter search: each trial is a training run of these flags.",
        )
        groups = _Groups(parser)
        _add_run_flags(groups)
        groups.add(
            "--space",
            action="append",
            default=[],
            metavar="NAME=VALUES",
            help="a config field or model.OPTION with values V1,V2 or a range "
            "uniform/loguniform/int/logint(low,high); repeat per parameter",
        )
        groups.add("--space-file", help="the space as a .json or .toml file")
        groups.add(
            "--storage",
            metavar="URL",
            help="share the search with every process given the same URL and --study: an "
            "optuna RDB URL, sqlite:///study.db on one machine, postgresql+psycopg2://... for many "
            "(default: none, this process alone)",
        )
        groups.add("--study", metavar="NAME", help="the shared study's name (with --storage)")
        groups.add("--method", default="grid", choices=METHODS, help="(default: grid)")
        groups.add("--trials", type=int, help="trials for random/tpe (default: grid: all)")
        groups.add(
            "--out", default="runs/search", help="directory for search.json (default: %(default)s)"
        )
        args = parser.parse_args(argv[1:])
        args.command = "search"
        return args
    parser = _Parser(
        prog="train.py",
        usage="train.py [FLAGS]  (or: train.py search|predict|evaluate|export ...)",
        description=__doc__.splitlines()[0],
        epilog=_COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = _Groups(parser)
    _add_run_flags(groups)
    groups.add(
        "--out",
        default="runs/latest",
        help="directory for metrics and plots (default: %(default)s)",
    )
    groups.add(
        "--plot",
        action="store_true",
        help="write curves.png and confusion.png (autoencoders: reconstructions.png, and for a "
        "vae samples.png; seq2seq: attention.png)",
    )
    groups.add(
        "--show-config",
        action="store_true",
        help="print the resolved config (the model's preset and the flags given) and exit",
    )
    groups.add(
        "--tensorboard",
        action="store_true",
        help="write each epoch's scalars to OUT/tensorboard for `tensorboard --logdir` "
        "(needs pip install -e '.[tensorboard]')",
    )
    groups.add(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its latest checkpoint (its config, with any flags "
        "given here on top)",
    )
    groups.add(
        "--stop-after-steps",
        type=int,
        metavar="N",
        help="save and exit with status 143 after N steps; --resume continues (for time-limited "
        "jobs)",
    )
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues a run and --overwrite replaces it: pass one of them")
    if args.resume:
        args.out = args.resume
    args.command = "train"
    return args


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return None if value is None else int(value)
    except ValueError:  # a bad config value, exit status 2 like every other
        print(f"train.py: error: {name}={value!r} must be an integer", file=sys.stderr)
        raise SystemExit(2) from None


def _cpu_devices(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a count of at least 1, got {text!r}")
    return count


def use_cpu_devices(args: argparse.Namespace, config: TrainConfig, space: dict | None) -> str:
    """Sets how many CPU devices JAX makes (`zoo.runtime.use_cpu_cores`), before JAX starts:
    `--cpu-devices N`, or for `auto` the model's default (`default_cpu_devices`) unless the user
    set a count in the environment. A search over models or batch sizes keeps one device, as its
    trials could not all split their batches alike. Returns what the device line says of it."""
    if args.cpu_devices != "auto":
        runtime.use_cpu_cores(args.cpu_devices, override=True)
        return f"--cpu-devices {args.cpu_devices}"
    if args.parallel == "none" or (space and {"model", "batch_size"} & set(space)):
        return ""
    processes = args.num_processes or 1
    count = default_cpu_devices(config.model, config.batch_size, processes, config.model_options)
    if count > 1 and runtime.use_cpu_cores(count):
        return f"one per core for {config.model}: --cpu-devices 1 for one"
    width = models.recurrent_width(config.model, config.model_options)
    if width > SPLIT_WIDTH and not runtime.cpu_device_count_set():
        return f"{width}-wide layers use every core already: --cpu-devices N to split"
    return ""


def join_processes(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` when a multi-process run is asked for; before any other JAX
    call, as JAX requires."""
    given = {
        "--coordinator": args.coordinator,
        "--num-processes": args.num_processes,
        "--process-id": args.process_id,
    }
    if all(value is None for value in given.values()):
        return
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise ConfigError(f"a multi-process run needs {', '.join(missing)} as well")
    initialize_distributed(
        args.coordinator, args.num_processes, args.process_id, timeout=args.init_timeout
    )


def parse_model_options(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs as a dict: values are Python literals, or bare words such as `pool=avg`.

    Raises:
      ConfigError: for a pair without `=`, or a value that looks like a literal (it starts with a
        bracket, quote, digit or sign, or holds a bracket or comma) and does not parse.
    """
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            looks_literal = not text or text[0] in "([{'\"+-" or text[0].isdigit()
            if looks_literal or any(c in text for c in "()[]{},"):
                reason = error.msg if isinstance(error, SyntaxError) else "quote the strings in it"
                raise ConfigError(
                    f"--model-option {key}={text} is not a valid Python literal ({reason})"
                ) from None
            options[key] = text  # a bare word such as pool=avg
    return options


def build_config(args: argparse.Namespace) -> TrainConfig:
    given = {field: getattr(args, field) for field, _, _ in _CONFIG_FLAGS}
    overrides = {k: v for k, v in given.items() if v is not None}
    options = parse_model_options(args.model_option)
    if getattr(args, "resume", None):
        saved = saved_config(args.resume)
        if saved is None:
            raise ConfigError(
                f"--resume {args.resume}: no readable checkpoint in "
                f"{os.path.join(args.resume, CHECKPOINTS)}; refusing to start over"
            )
        if args.model and args.model != saved["model"]:
            saved = {"model": args.model}  # a different model: let the checkpoint check name it
        options = {**saved.pop("model_options", {}), **options}
        return TrainConfig.from_dict({**saved, **overrides, "model_options": options})
    overrides["model_options"] = options
    return TrainConfig.for_model(args.model or "cnn", **overrides)


USE_COMMANDS = ("predict", "evaluate", "export")


def parse_use_args(argv: list[str]) -> argparse.Namespace:
    """`predict` and `evaluate`: what a trained run in `--run DIR` says about new inputs."""
    command = argv[0]
    parser = _Parser(prog=f"train.py {command}", description=_use_main.__doc__)
    parser.add_argument("--run", required=True, metavar="DIR", help="a train.py --out")
    parser.add_argument(
        "--which", choices=WHICH, default="best", help="best (early-stopped) or latest params"
    )
    if command == "predict":
        parser.add_argument("inputs", nargs="*", metavar="INPUT", help="images, .npy, or CSV")
        parser.add_argument("--top-k", type=int, default=3, help="classes shown per input")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--prompt",
            help="charlm: the text to continue; a tagger of characters: the text to tag; "
            "seq2seq: the source, e.g. 4217",
        )
        parser.add_argument("--length", type=int, help="charlm: characters (default 200)")
        parser.add_argument("--temperature", type=float, help="charlm: sampling (default 1)")
        parser.add_argument("--seed", type=int, help="charlm: sampling (default 0)")
        parser.add_argument("--column", help="forecast: the CSV column (default: the run's)")
    elif command == "export":
        parser.add_argument("--out", required=True, metavar="FILE", help="the serialized model")
        parser.add_argument(
            "--platforms", type=_names, default=("cpu", "cuda"), help="default: cpu,cuda"
        )
    else:
        parser.add_argument(
            "--dataset", choices=data.DATASETS, help="evaluate on another dataset's test split"
        )
        parser.add_argument("--data-path", metavar="PATH", help="its file or folder")
        for field, flag, options in _CONFIG_FLAGS:
            if field in DATA_FIELDS:
                text = options["help"] + " (default: the run's, on a dataset of its kind)"
                parser.add_argument(flag, dest=field, **{**options, "help": text})
    args = parser.parse_args(argv[1:])
    args.command = command
    return args


def _data_flags(args: argparse.Namespace) -> dict:
    """The data flags given to evaluate."""
    return {
        field: getattr(args, field) for field in DATA_FIELDS if getattr(args, field) is not None
    }


def _use_main(args: argparse.Namespace) -> int:
    """Predict with, or evaluate, the model a train.py run trained."""
    trained = zoo.load(args.run, which=args.which)
    if args.command == "export":
        serialized = trained.export(tuple(args.platforms))
        with open(args.out, "wb") as f:
            f.write(serialized)
        call = "x, lengths" if trained.dataset.get("variable_length") else "x"
        print(f"wrote {args.out} ({len(serialized):,} bytes; {', '.join(args.platforms)}): "
              f"jax.export.deserialize(open(FILE, 'rb').read()).call({call})")  # fmt: skip
        return 0
    if args.command == "evaluate":
        dataset = trained.read_data(
            args.dataset, args.data_path, workdir=args.run,
            **_data_flags(args),
        )  # fmt: skip
        metrics = trained.evaluate(dataset.test)
        metrics.pop("confusion_matrix", None)
        print(json.dumps({f"test_{k}": v for k, v in metrics.items()}))
        return 0
    sampling = {"--prompt": args.prompt, "--length": args.length,
                "--temperature": args.temperature, "--seed": args.seed}  # fmt: skip
    if trained.task == "language":
        if args.prompt is None or args.inputs:
            raise ConfigError("predict with a charlm takes --prompt TEXT and no INPUT files")
        text = trained.sample(
            args.prompt,
            200 if args.length is None else args.length,
            temperature=1.0 if args.temperature is None else args.temperature,
            seed=args.seed or 0,
        )
        print(text)
        return 0
    if trained.task == "seq2seq":
        if args.prompt is None or args.inputs:
            raise ConfigError("predict with a seq2seq model takes --prompt TEXT, e.g. 4217")
        print(trained.translate([args.prompt])[0])
        return 0
    if trained.task == "tag" and trained.dataset.get("vocab"):
        if args.prompt is None or args.inputs:
            raise ConfigError("predict with a tagger of characters takes --prompt TEXT")
        _print_tags(args.prompt, trained.tag(args.prompt), trained.class_names, args.json)
        return 0
    given = [flag for flag, value in sampling.items() if value is not None]
    given += ["--column"] if args.column is not None and trained.task != "regress" else []
    if given:
        raise ConfigError(
            f"{', '.join(given)}: not read by a {trained.config.model} model "
            "(--prompt/--length/--temperature/--seed: charlm; --column: forecast)"
        )
    if not args.inputs:
        raise ConfigError("predict needs INPUT files (images, .npy arrays, or CSV)")
    batch, names = read_inputs(trained, args.inputs, column=args.column)
    outputs = trained.predict(batch)
    if trained.task in RECONSTRUCTION_TASKS:  # how far each input is from what the model knows
        errors = np.square(outputs - batch).reshape(len(batch), -1).mean(axis=1)
        rows = [
            {"input": name, "reconstruction_mse": float(error)}
            for name, error in zip(names, errors, strict=True)
        ]
        if args.json:
            print(json.dumps(rows))
        for row in [] if args.json else rows:
            print(f"{row['input']}: reconstruction mse {row['reconstruction_mse']:.4g}")
        return 0
    classes = trained.class_names or tuple(str(i) for i in range(outputs.shape[-1]))
    rows = []
    for name, output in zip(names, outputs, strict=True):
        if trained.task == "regress":
            rows.append({"input": name, "forecast": output.tolist()})
        else:
            top = np.argsort(-output)[: args.top_k]
            shown = [{"class": classes[i], "probability": float(output[i])} for i in top]
            rows.append({"input": name, "top": shown})
    if args.json:
        print(json.dumps(rows))
    for row in [] if args.json else rows:
        if "forecast" in row:
            print(f"{row['input']}: {', '.join(f'{v:.4g}' for v in row['forecast'])}")
        else:
            shown = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
            print(f"{row['input']}: {shown}")
    return 0


def main(argv: list[str]) -> int:
    reuse_freed_memory()  # XLA:CPU's per-step buffers stop costing page faults (zoo.runtime),
    runtime.run_steps_inline()  # also those of steps it would run on a worker thread
    if argv[:1] and argv[0] in USE_COMMANDS:
        try:
            return _use_main(parse_use_args(argv))
        except (ValueError, FileNotFoundError, ImportError, CheckpointError) as error:
            print(f"train.py: error: {_with_flag(str(error))}", file=sys.stderr)
            return 2
    args = parse_args(argv)
    if args.debug_nans:
        jax.config.update("jax_debug_nans", True)
    try:
        if getattr(args, "show_config", False):
            config = build_config(args)
            models.create(config.model, **config.model_options)  # an unknown option fails here
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        config = build_config(args)
        space = None
        if args.command == "search":
            space = load_space(args.space_file) if args.space_file else None
            if args.space:
                space = {**(space or {}), **parse_space_args(_field_names(args.space))}
            if not space:
                raise ConfigError("search needs --space NAME=VALUES or --space-file")
        cpu_devices = use_cpu_devices(args, config, space)
        join_processes(args)
        log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
        if jax.process_index() > 0:
            log = lambda line: None  # noqa: E731 - process 0 speaks for all
        platform = jax.devices()[0].platform
        log(
            f"devices: {jax.device_count()} x {platform}"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + (f" ({cpu_devices})" if cpu_devices and platform == "cpu" else "")
        )
        if args.command == "search":
            summary = run_search(
                config,
                space,
                args.out,
                method=args.method,
                trials=args.trials,
                log=log,
                parallel=args.parallel,
                overwrite=args.overwrite,
                storage=args.storage,
                study=args.study,
                data_workers=args.data_workers,
            )
            if jax.process_index() == 0:
                print(format_table(summary))
                print(f"wrote {args.out}/search.json")
            return 0
        train_and_evaluate(
            config,
            args.out,
            log=lambda line: print(line, flush=True),
            verbose=not args.quiet,
            plot=args.plot,
            resume=bool(args.resume),
            stop_after_steps=args.stop_after_steps,
            parallel=args.parallel,
            overwrite=args.overwrite,
            tensorboard=args.tensorboard,
            data_workers=args.data_workers,
        )
    except Preempted as stop:
        print(f"train.py: {stop}; continue with --resume {args.out}", file=sys.stderr)
        return PREEMPTED
    except (CheckpointError, NonFiniteError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return FAILED
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"train.py: error: {_with_flag(str(error))}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        plots = ", curves.png, " + _IMAGES.get(models.task(config.model), "confusion.png")
        plots = plots if args.plot else ""
        print(f"wrote {args.out}/metrics.json{plots}")
    return 0


def _print_tags(text: str, probabilities: np.ndarray, class_names, as_json: bool) -> None:
    """Each character's most probable tag as JSON, or the text cut after every character whose
    tag is not the first (for `--dataset words`: the words, spaces put back)."""
    names = class_names or tuple(str(i) for i in range(probabilities.shape[-1]))
    tags = probabilities.argmax(axis=-1)
    if as_json:
        rows = [
            {"character": c, "tag": names[t], "probability": float(p[t])}
            for c, t, p in zip(text, tags, probabilities, strict=True)
        ]
        print(json.dumps(rows))
        return
    print("".join(c + (" " if t else "") for c, t in zip(text, tags, strict=True)).rstrip())


# What --plot draws besides the curves, by task.
_IMAGES = {
    "classify": "confusion.png",
    "reconstruct": "reconstructions.png",
    "vae": "reconstructions.png, samples.png",
    "seq2seq": "attention.png",
}


def _field_names(pairs: list[str]) -> list[str]:
    """Lets --space use flag names (lr=..., batch-size=...) as well as config fields."""
    by_flag = {flag.lstrip("-"): field for field, flag in _FLAGS.items()}
    named = []
    for pair in pairs:
        name, sep, rest = pair.partition("=")
        named.append(by_flag.get(name, name.replace("-", "_")) + sep + rest)
    return named


def _with_flag(message: str) -> str:
    """Names the CLI flag instead of the config field, where a message starts with a field, and
    wherever it names data_path."""
    field = message.split(" ", 1)[0]
    if field in _FLAGS:
        message = message.replace(field, _FLAGS[field], 1)
    return re.sub(r"\bdata_path\b", "--data-path", message)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
