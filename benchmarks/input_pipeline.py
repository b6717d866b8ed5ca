"""The image-folder pipeline against the same images held as an array.

    python benchmarks/input_pipeline.py [--epochs 3] [--out benchmarks]

Writes the bundled digits (28x28, all 1,797) as PNG class folders in a temporary directory, then
measures, in one run:
  - the pipeline alone: images/s of one pass of batches over the training split, decoding
    (epoch 1) and from the decoded cache (epoch 2), with 0 and 2 decoding threads, against
    indexing the in-memory array;
  - the seed CNN's epoch time training on the folder (`--dataset images`) against the same
    pixels as an `.npz` (`--dataset arrays`), per epoch: from epoch 2 on the folder is read
    from its cache.
Prints a markdown table and writes `input_pipeline.json` to `--out`.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zoo import data  # noqa: E402
from zoo.data.images import load_image_folder, save_image_folder  # noqa: E402
from zoo.training import TrainConfig, train_and_evaluate  # noqa: E402

BATCH_SIZE = 32


def digits_as_files(root: str) -> tuple[np.ndarray, np.ndarray]:
    """Every digit, 28x28, as PNGs under `root/png` and the same pixels in `root/digits.npz`."""
    digits = data.load_digits()
    x = np.concatenate([split.x for split in digits[:3]])
    y = np.concatenate([split.y for split in digits[:3]])
    save_image_folder(os.path.join(root, "png"), x, y, [str(label) for label in range(10)])
    pixels = np.round(x * 255).astype(np.uint8).astype(np.float32) / 255  # as the PNGs hold them
    np.savez(os.path.join(root, "digits.npz"), x=pixels, y=y)
    return pixels, y


def pass_seconds(split: data.Split, epoch: int) -> float:
    start = time.perf_counter()
    for _ in data.batches(split, BATCH_SIZE, seed=0, epoch=epoch):
        pass
    return time.perf_counter() - start


def pipeline_alone(root: str) -> list[dict]:
    rows = []
    in_memory = data.load("arrays", path=os.path.join(root, "digits.npz")).train
    seconds = min(pass_seconds(in_memory, epoch) for epoch in range(3))
    rows.append({"source": "array in memory", "workers": 0, "epoch": 1, "seconds": seconds})
    for workers in (0, 2):
        cache = tempfile.mkdtemp(dir=root)
        train = load_image_folder(os.path.join(root, "png"), cache_dir=cache, workers=workers).train
        for epoch in (1, 2):
            seconds = pass_seconds(train, epoch)
            rows.append({"source": "png folder", "workers": workers, "epoch": epoch,
                         "seconds": seconds})  # fmt: skip
    n = (len(in_memory.x) // BATCH_SIZE) * BATCH_SIZE
    for row in rows:
        row["images_per_second"] = n / row["seconds"]
    return rows


def training_epochs(root: str, epochs: int) -> dict[str, list[float]]:
    """Seconds of each training epoch of the seed CNN on the folder and on the array."""
    sources = {"images": os.path.join(root, "png"), "arrays": os.path.join(root, "digits.npz")}
    seconds = {}
    for dataset, path in sources.items():
        config = TrainConfig(model="cnn", dataset=dataset, data_path=path, epochs=epochs)
        out = tempfile.mkdtemp(dir=root)
        results = train_and_evaluate(config, out, log=lambda line: None)
        examples = results["steps"] // len(results["history"]) * BATCH_SIZE  # per epoch
        seconds[dataset] = [
            examples / record["examples_per_second"] for record in results["history"]
        ]
    return seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per source")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the cached epochs are compared")
    with tempfile.TemporaryDirectory() as root:
        digits_as_files(root)
        pipeline = pipeline_alone(root)
        epochs = training_epochs(root, args.epochs)
    later = slice(1, None)
    ratio = float(np.median(epochs["images"][later]) / np.median(epochs["arrays"][later]))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "batch_size": BATCH_SIZE,
        "pipeline": pipeline,
        "train_epoch_seconds": epochs,
        "folder_over_array_from_epoch_2": ratio,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "input_pipeline.json"), "w") as f:
        json.dump(report, f, indent=2)
    print("| source | workers | epoch | images/s |\n|---|---|---|---|")
    for row in pipeline:
        print(f"| {row['source']} | {row['workers']} | {row['epoch']} | "
              f"{row['images_per_second']:,.0f} |")  # fmt: skip
    print("\n| seed CNN epoch | " + " | ".join(f"{i + 1}" for i in range(args.epochs)) + " |")
    print("|---|" + "---|" * args.epochs)
    for name, seconds in epochs.items():
        print(f"| {name} | " + " | ".join(f"{s:.2f} s" for s in seconds) + " |")
    print(f"\nfolder / array epoch time from epoch 2: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
