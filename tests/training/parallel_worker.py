"""Trains a few steps under one data-parallel layout and saves the final params and batch-norm
statistics as `OUT/<layout>.npz`; run as a subprocess by test_parallel.py (forced host devices,
or one of several processes of a `jax.distributed` run). With `--images DIR` it instead reads
`--steps` training batches of that image folder as the training loop does and saves which
files it checked at load and decoded as `OUT/images-<process>.npz`.

    python tests/training/parallel_worker.py --model convnet --parallel none,pmap --out DIR
"""

import argparse
import itertools
import os

import jax
import numpy as np

from zoo import data
from zoo.data.streaming import BatchStream, StepReader
from zoo.training import TrainConfig, create_train_state
from zoo.training import parallel as parallel_lib
from zoo.training.state import build_model

MODELS = {
    "convnet": ("digits", {"batch_norm": True, "features": (8, 16), "dense": (32,)}),
    "lstm": ("digits-seq", {"hidden_sizes": (32, 32)}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--parallel", help="comma list of layouts")
    parser.add_argument("--images", help="an image folder to read instead of training")
    parser.add_argument("--data-workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.coordinator:
        parallel_lib.initialize_distributed(
            args.coordinator, args.num_processes, args.process_id, timeout=60
        )
    if args.images:
        read_images(args.images, args.steps, args.batch_size, args.data_workers, args.out)
        return
    dataset_name, options = MODELS[args.model]
    dataset = data.load(dataset_name, seed=0)
    # SGD with momentum: Adam divides by the gradient's size, which magnifies float summation
    # noise in near-zero gradients far beyond the 1e-5 this comparison checks.
    config = TrainConfig.for_model(
        args.model,
        dataset=dataset_name,
        model_options=options,
        batch_size=args.batch_size,
        optimizer="sgd",
        learning_rate=0.01,
    )
    for name in args.parallel.split(","):
        result = train(parallel_lib.create(name), config, dataset, args.steps)
        if jax.process_index() == 0 or args.coordinator:
            suffix = f"-{jax.process_index()}" if args.coordinator else ""
            np.savez(os.path.join(args.out, f"{name}{suffix}.npz"), **result)


def read_images(folder, steps, batch_size, workers, out):
    """Reads this process's shard of `steps` batches into a cache of its own, and saves the
    files whose pixels it decoded."""
    from zoo.data import images
    from zoo.training.loop import load_dataset

    rank = jax.process_index()
    probed, probe = [], images._probe
    images._probe = lambda name: probed.append(name) or probe(name)
    config = TrainConfig(model="cnn", dataset="images", data_path=folder)
    train = load_dataset(config, os.path.join(out, f"run-{rank}"), print).train  # as a run loads
    reader = StepReader(
        train,
        batch_size,
        seed=0,
        steps_per_epoch=data.num_batches(len(train.x), batch_size),
        shard=parallel_lib.create("sharding").shard(),
    )
    with BatchStream(reader, 0, steps, workers) as stream:
        rows = sum(len(batch.x) for batch in stream)
    decoded = np.flatnonzero(train.x._cache.done)
    files = np.array([train.x._files[i] for i in decoded])
    np.savez(os.path.join(out, f"images-{rank}.npz"), files=files, rows=rows, probed=probed)


def train(layout, config, dataset, steps):
    layout.check_batch_size(config.batch_size)
    model = layout.prepare_model(build_model(config, dataset))
    state = create_train_state(model, config, dataset.train.x[:1], dataset.task)
    state = layout.put(state)
    batches = data.batches(dataset.train, config.batch_size, seed=0, shard=layout.shard())
    for batch in parallel_lib.prefetch(itertools.islice(batches, steps), layout.put_batch):
        state, metrics = layout.train_step(state, batch)
    result = layout.fetch({"params": state.params, "batch_stats": state.batch_stats})
    leaves = jax.tree_util.tree_flatten_with_path(result)[0]
    return {
        "devices": len(layout.devices),
        "processes": jax.process_count(),
        "loss_sum": parallel_lib.fetch_replicated(metrics["loss_sum"]),
        **{jax.tree_util.keystr(path): leaf for path, leaf in leaves},
    }


if __name__ == "__main__":
    main()
