"""Training: config, train state, jitted steps, the loop, checkpoints, search and metrics."""

from zoo.training.checkpoint import CheckpointError
from zoo.training.config import ConfigError, TrainConfig
from zoo.training.loop import NonFiniteError, Preempted, train_and_evaluate
from zoo.training.metrics import evaluate
from zoo.training.state import TrainState, create_optimizer, create_train_state
from zoo.training.steps import eval_step, loss_fn, train_step

__all__ = [
    "CheckpointError",
    "ConfigError",
    "NonFiniteError",
    "Preempted",
    "TrainConfig",
    "TrainState",
    "create_optimizer",
    "create_train_state",
    "eval_step",
    "evaluate",
    "loss_fn",
    "train_and_evaluate",
    "train_step",
]
