"""The image-folder pipeline against the same images held as an array.

    python benchmarks/input_pipeline.py [--epochs 3] [--out benchmarks]

Writes the bundled digits (28x28, all 1,797) as PNG class folders in a temporary directory, then
measures, in one run:
  - the pipeline alone: images/s of the training batches of two epochs, read the way the
    training loop reads them (`zoo.data.streaming.BatchStream`), decoding (epoch 1) and from the
    decoded cache (epoch 2), in the loop's process (0 workers) and by 2 grain worker processes,
    against indexing the in-memory array; the workers' start-up is reported apart;
  - the same for 1,024 of them upscaled to 224x224 RGB JPEGs, where decoding dominates;
  - the seed CNN's epoch time training on the folder (`--dataset images`, with 0 and 2 data
    workers) against the same pixels as an `.npz` (`--dataset arrays`), per epoch: from epoch 2
    on the folder is read from its cache.
Prints a markdown table and writes `input_pipeline.json` to `--out`.
"""

import argparse
import itertools
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
from zoo.data.streaming import BatchStream, StepReader  # noqa: E402
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


def epoch_rates(split: data.Split, workers: int, epochs: int = 2) -> tuple[float, list[float]]:
    """(seconds to the first batch, images/s of each epoch after it) read as the loop does;
    the first batch's time (the workers' start-up) is left out of epoch 1's rate."""
    steps = data.num_batches(len(split.x), BATCH_SIZE)
    reader = StepReader(split, BATCH_SIZE, seed=0, steps_per_epoch=steps)
    start = time.perf_counter()
    with BatchStream(reader, 0, epochs * steps, workers) as stream:
        next(stream)
        first = time.perf_counter() - start
        rates = []
        for epoch in range(epochs):
            count = steps - 1 if epoch == 0 else steps
            begin = time.perf_counter()
            for _ in itertools.islice(stream, count):
                pass
            rates.append(count * BATCH_SIZE / (time.perf_counter() - begin))
    return first, rates


def pipeline_alone(root: str) -> list[dict]:
    in_memory = data.load("arrays", path=os.path.join(root, "digits.npz")).train
    _, rates = epoch_rates(in_memory, workers=0)
    rows = [{"source": "array in memory", "workers": 0, "epoch": 2, "images_per_second": rates[1]}]
    for workers in (0, 2):
        train = load_image_folder(os.path.join(root, "png"), cache_dir=tempfile.mkdtemp(dir=root))
        first, rates = epoch_rates(train.train, workers)
        for epoch, rate in enumerate(rates, 1):
            rows.append({"source": "png folder", "workers": workers, "epoch": epoch,
                         "images_per_second": rate, "start_seconds": first})  # fmt: skip
    return rows + large_images_alone(root)


def large_images_alone(root: str, count: int = 1024, size: int = 224) -> list[dict]:
    """Where decoding dominates: `count` digits upscaled to `size`x`size` RGB JPEGs."""
    from PIL import Image

    digits = data.load_digits().train
    small = np.round(digits.x[:count, :, :, 0] * 255).astype(np.uint8)
    large = [Image.fromarray(x).resize((size, size), Image.BILINEAR).convert("RGB") for x in small]
    x = np.stack([np.asarray(image) for image in large]).astype(np.float32) / 255
    folder = os.path.join(root, "jpeg")
    save_image_folder(folder, x, digits.y[:count], [str(d) for d in range(10)], suffix=".jpg")
    rows = []
    for workers in (0, 2):
        train = load_image_folder(folder, cache_dir=tempfile.mkdtemp(dir=root)).train
        first, rates = epoch_rates(train, workers, epochs=1)
        rows.append({"source": f"{size}x{size} RGB jpeg folder", "workers": workers, "epoch": 1,
                     "images_per_second": rates[0], "start_seconds": first})  # fmt: skip
    return rows


def training_epochs(root: str, epochs: int) -> dict[str, list[float]]:
    """Seconds of each training epoch of the seed CNN on the folder and on the array."""
    runs = {
        "arrays": ("arrays", os.path.join(root, "digits.npz"), 0),
        "images, 0 workers": ("images", os.path.join(root, "png"), 0),
        "images, 2 workers": ("images", os.path.join(root, "png"), 2),
    }
    seconds = {}
    for name, (dataset, path, workers) in runs.items():
        config = TrainConfig(model="cnn", dataset=dataset, data_path=path, epochs=epochs)
        out = tempfile.mkdtemp(dir=root)
        results = train_and_evaluate(config, out, log=lambda line: None, data_workers=workers)
        examples = results["steps"] // len(results["history"]) * BATCH_SIZE  # per epoch
        seconds[name] = [examples / record["examples_per_second"] for record in results["history"]]
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
    array_epoch = np.median(epochs["arrays"][later])
    ratios = {
        name: float(np.median(times[later]) / array_epoch)
        for name, times in epochs.items()
        if name != "arrays"
    }
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "batch_size": BATCH_SIZE,
        "pipeline": pipeline,
        "train_epoch_seconds": epochs,
        "folder_over_array_from_epoch_2": ratios,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "input_pipeline.json"), "w") as f:
        json.dump(report, f, indent=2)
    print("| source | workers | epoch | images/s | start-up |\n|---|---|---|---|---|")
    for row in pipeline:
        start = f"{row['start_seconds']:.2f} s" if "start_seconds" in row else ""
        print(f"| {row['source']} | {row['workers']} | {row['epoch']} | "
              f"{row['images_per_second']:,.0f} | {start} |")  # fmt: skip
    print("\n| seed CNN epoch | " + " | ".join(f"{i + 1}" for i in range(args.epochs)) + " |")
    print("|---|" + "---|" * args.epochs)
    for name, seconds in epochs.items():
        print(f"| {name} | " + " | ".join(f"{s:.2f} s" for s in seconds) + " |")
    for name, ratio in ratios.items():
        print(f"\n{name} / arrays, epoch time from epoch 2: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
