"""Train a zoo model: `python train.py --model cnn --dataset digits --epochs 20 --out runs/cnn`.

A thin CLI over `zoo.training.train_and_evaluate`: parse and validate flags into a `TrainConfig`,
log the devices, run. Bad flags or values exit with status 2 and one line naming the flag.
"""

import argparse
import ast
import sys

import jax

from zoo import data, models
from zoo.training import ConfigError, TrainConfig, train_and_evaluate

# Config fields and the flags that set them, for error messages that name what the user typed.
_FLAGS = {
    "model": "--model",
    "model_options": "--model-option",
    "dataset": "--dataset",
    "data_path": "--data-path",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "optimizer": "--optimizer",
    "learning_rate": "--lr",
    "momentum": "--momentum",
    "seed": "--seed",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = _Parser(prog="train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.model, choices=models.names())
    # None means "the model's preset" (zoo.training.config.PRESETS).
    parser.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameter, e.g. --model-option features=32,64 (Python literal values)",
    )
    preset = " (default: the model's preset)"
    parser.add_argument("--dataset", choices=data.DATASETS, help="dataset" + preset)
    parser.add_argument("--data-path", default=None, help="mnist.npz or a directory of IDX files")
    parser.add_argument("--epochs", type=int, help="passes over the training split" + preset)
    parser.add_argument("--batch-size", type=int, help="examples per step" + preset)
    parser.add_argument("--optimizer", help="adam, sgd or rmsprop" + preset)
    parser.add_argument("--lr", type=float, help="learning rate" + preset)
    parser.add_argument("--momentum", type=float, help="for sgd and rmsprop" + preset)
    parser.add_argument("--seed", type=int, help="data split, order, init and dropout" + preset)
    parser.add_argument("--out", default="runs/latest", help="directory for metrics.json")
    return parser.parse_args(argv)


def parse_model_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text  # a bare word such as pool=avg
    return options


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        given = {
            "model_options": parse_model_options(args.model_option),
            "dataset": args.dataset,
            "data_path": args.data_path,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "learning_rate": args.lr,
            "momentum": args.momentum,
            "seed": args.seed,
        }
        overrides = {k: v for k, v in given.items() if v is not None}
        config = TrainConfig.for_model(args.model, **overrides)
        print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}", flush=True)
        train_and_evaluate(config, args.out, log=lambda line: print(line, flush=True))
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"train.py: error: {_with_flag(str(error))}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/metrics.json")
    return 0


def _with_flag(message: str) -> str:
    """Names the CLI flag instead of the config field, where a message starts with a field."""
    field = message.split(" ", 1)[0]
    return message.replace(field, _FLAGS[field], 1) if field in _FLAGS else message


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
