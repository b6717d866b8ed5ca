"""The training batches of a whole run, read in the loop's thread or by grain worker processes.

A run's batches are a pure function of the step: step `s` is batch `s % steps_per_epoch` of epoch
`s // steps_per_epoch`'s `epoch_plan`. With `workers=0` they are read as the loop asks for them.
With workers, grain (`grain.MapDataset` over the run's steps, `mp_prefetch`) reads them in that
many processes, ahead of the loop and in the same order: decoding images, or any indexing a lazy
`x` does, then runs beside the train step. The processes start once per run (about a second
each), not once per epoch; `close()` stops them. Each process of a multi-process run reads only
its `shard` of every batch, so with an image folder it decodes only its own images.
"""

import gc
import signal
from collections.abc import Iterator
from multiprocessing import resource_tracker

import numpy as np

from zoo.data.batching import Batch, check_shard, epoch_plan, read_batch
from zoo.data.splits import Split


class StepReader:
    """`reader(step)`: this process's `Batch` of training step `step` (picklable, for workers)."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        seed: int,
        steps_per_epoch: int,
        shard: tuple[int, int] = (0, 1),
        bucket: bool = False,
        per_step_targets: bool = False,
    ):
        check_shard(batch_size, "drop", shard)
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.shard = shard
        self.bucket = bucket
        self.per_step_targets = per_step_targets
        self._plan = (None, [])  # (epoch, its plan): the epoch being read

    def __call__(self, step: int) -> Batch:
        epoch, index = divmod(int(step), self.steps_per_epoch)
        if self._plan[0] != epoch:
            self._plan = (epoch, self._epoch_plan(epoch))
        planned = self._plan[1][index]
        return read_batch(
            self.split, planned, shard=self.shard, per_step_targets=self.per_step_targets
        )

    def _epoch_plan(self, epoch: int):
        plan = epoch_plan(
            len(self.split.x),
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            lengths=self.split.lengths,
            bucket=self.bucket,
        )
        if len(plan) != self.steps_per_epoch:
            raise ValueError(f"an epoch has {len(plan)} batches, not {self.steps_per_epoch}")
        return plan


class BatchStream:
    """Iterates the batches of steps `first..last-1`; `close()` stops grain's workers, if any."""

    def __init__(self, reader: StepReader, first: int, last: int, workers: int = 0):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._workers = workers
        self._iterator = _read(reader, first, last, workers)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        return _as_batch(batch) if self._workers else batch  # read here: no copy needed

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is None:  # read in this process: nothing to stop
            return
        close()
        # grain's iterator sits in reference cycles that hold the shared memory of each
        # worker's first batch; collected now, it is unlinked before the process exits.
        self._iterator = iter(())
        gc.collect()

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def require_grain():
    """grain, or an ImportError saying which extra installs it."""
    try:
        import grain
    except ImportError as e:
        raise ImportError(
            "reading batches in worker processes needs grain: pip install 'zoo[grain]'"
        ) from e
    from absl import flags

    # grain reads an absl flag when it starts workers, which fails in a program that never
    # parsed absl's flags (a plain script); parsing them is absl.app.run's job, so mark them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def _read(reader: StepReader, first: int, last: int, workers: int):
    if not workers:
        return map(reader, range(first, last))
    grain = require_grain()
    dataset = grain.MapDataset.range(first, last).map(reader).to_iter_dataset()
    # Workers hand batches over in shared memory, which this process unlinks. Started before
    # them, one resource tracker sees both ends; else each worker starts its own, which never
    # hears of the unlink and warns of "leaked shared_memory objects" at exit.
    resource_tracker.ensure_running()
    options = grain.MultiprocessingOptions(num_workers=workers)
    return iter(dataset.mp_prefetch(options, worker_init_fn=_leave_signals_to_the_trainer))


def _leave_signals_to_the_trainer(index: int, count: int) -> None:
    """A worker ignores SIGTERM and SIGINT, which a scheduler or Ctrl-C sends the whole process
    group: the training process saves its checkpoint and then stops the workers itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _as_batch(batch) -> Batch:
    """A batch in the process's own memory: a worker's arrays come in shared memory, which is
    unlinked as soon as they are copied out, so none outlives its step."""
    x, y, mask, lengths = batch
    lengths = None if lengths is None else np.array(lengths)
    return Batch(np.array(x), np.array(y), np.array(mask), lengths)
