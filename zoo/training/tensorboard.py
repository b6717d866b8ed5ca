"""A run's scalars as TensorBoard event files, `OUT/tensorboard/events.out.tfevents.*`.

Written with tensorboardX (`pip install -e ".[tensorboard]"`), which needs neither TensorFlow nor
TensorBoard itself; read them with `tensorboard --logdir runs/`. Each epoch adds its record
(train and validation metrics, examples/s) and the learning rate at the epoch's last step, at
that step. A resumed run starts a new event file that purges the events after its checkpoint,
so TensorBoard shows one history, not the killed run's extra steps beside the resumed ones.
"""

import os
from typing import Any

from zoo.training.config import ConfigError

SUBDIR = "tensorboard"


def require_tensorboardx() -> None:
    """Fails before a run starts, naming the install, when tensorboardX is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs tensorboardX: pip install -e '.[tensorboard]'"
        ) from None


class ScalarWriter:
    """Writes each epoch's scalars under `workdir/tensorboard`; `close` when the run ends."""

    def __init__(self, workdir: str, *, resumed_at: int = 0):
        require_tensorboardx()
        from tensorboardX import SummaryWriter

        self.directory = os.path.join(workdir, SUBDIR)
        self._writer = SummaryWriter(self.directory, purge_step=resumed_at or None)

    def write(self, record: dict[str, Any], step: int, learning_rate: float) -> None:
        """The numbers of an epoch's `record` (but its index) and `learning_rate`, at `step`."""
        for name, value in record.items():
            if name != "epoch" and isinstance(value, int | float):
                self._writer.add_scalar(name, value, step)
        self._writer.add_scalar("learning_rate", learning_rate, step)
        self._writer.flush()  # a killed run keeps every finished epoch's scalars

    def close(self) -> None:
        self._writer.close()
