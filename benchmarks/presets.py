"""Trains models with their presets, one after another, and records what the README's preset
table reports: the test result and `train_seconds` of each `python train.py --model NAME`.

    python benchmarks/presets.py lenet5 resnet20          # these presets
    python benchmarks/presets.py 'resnet*' --seed 1       # every ResNet, another seed

Each run writes to `--runs/NAME` (replaced), and its row is merged into `--out`
(`benchmarks/presets.json`) with the date, the machine, the versions and the command.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from zoo import models  # noqa: E402
from zoo.training import TrainConfig, train_and_evaluate  # noqa: E402

RESULT_KEYS = ("test_accuracy", "test_bpc", "test_mse", "naive_mse", "test_elbo", "test_kl")


def run_preset(name: str, seed: int, runs: str) -> dict:
    out = os.path.join(runs, name)
    config = TrainConfig.for_model(name, seed=seed)
    start = time.perf_counter()
    results = train_and_evaluate(config, out, log=lambda line: None, overwrite=True)
    return {
        "command": f"python train.py --model {name} --seed {seed}",
        "dataset": config.dataset,
        "epochs": results["epochs"],
        "best_epoch": results.get("best_epoch"),
        **{key: results[key] for key in RESULT_KEYS if key in results},
        "train_seconds": results["train_seconds"],
        "wall_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="registry names or patterns ('resnet*')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="/tmp/zoo-presets", help="run directories' parent")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "presets.json"))
    args = parser.parse_args()
    names = [n for pattern in args.names for n in models.names(pattern)]
    if not names:
        parser.error(f"no registered model matches {' '.join(args.names)}")
    table = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for name in names:
        row = run_preset(name, args.seed, args.runs)
        row |= {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} x{os.cpu_count()}, {jax.default_backend()}",
            "jax": jax.__version__,
        }
        table[f"{name} seed {args.seed}"] = row
        print(json.dumps({name: row}), flush=True)
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
