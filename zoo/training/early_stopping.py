"""Early stopping on a validation metric, with patience and a minimum improvement."""

import dataclasses
import math

from zoo.training.config import MONITORS, ConfigError

# The validation metrics `evaluate` reports for each task.
TASK_MONITORS = {
    "classify": ("val_loss", "val_accuracy", "val_macro_f1"),
    "tag": ("val_loss", "val_accuracy"),
    "language": ("val_loss", "val_accuracy", "val_bpc"),
    "seq2seq": ("val_loss", "val_accuracy", "val_exact_match"),
    "regress": ("val_loss", "val_mse"),
    "reconstruct": ("val_loss", "val_mse"),
    "vae": ("val_loss", "val_elbo", "val_mse"),
}


def default_monitor(task: str) -> str:
    return "val_accuracy" if task in ("classify", "tag") else "val_loss"


def check_monitor(monitor: str, task: str) -> None:
    if monitor not in TASK_MONITORS[task]:
        raise ConfigError(
            f"monitor {monitor!r} is not reported for {task} models; choose from: "
            f"{', '.join(TASK_MONITORS[task])}"
        )


@dataclasses.dataclass
class EarlyStopping:
    """Tracks the best value of `monitor`; `update` says whether an epoch improved on it.

    An epoch improves when it beats the best by more than `min_delta` (up for accuracy and F1,
    down for losses). With `patience`, `should_stop` turns True after that many epochs in a row
    without improvement; with `patience=None` it never does, but the best epoch is still tracked.
    """

    monitor: str
    patience: int | None = None
    min_delta: float = 0.0
    best: float = dataclasses.field(init=False)
    best_epoch: int = dataclasses.field(default=0, init=False)
    bad_epochs: int = dataclasses.field(default=0, init=False)

    def __post_init__(self):
        self.best = -math.inf if self.higher_is_better else math.inf

    @property
    def higher_is_better(self) -> bool:
        return MONITORS[self.monitor]

    def update(self, epoch: int, value: float) -> bool:
        """Records `epoch`'s value; True when it is the new best."""
        gain = value - self.best if self.higher_is_better else self.best - value
        if gain > self.min_delta or (self.best_epoch == 0 and math.isfinite(value)):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience
