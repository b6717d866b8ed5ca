"""Training: config, train state, jitted steps, the loop and evaluation metrics."""

from zoo.training.config import ConfigError, TrainConfig
from zoo.training.loop import evaluate, train_and_evaluate
from zoo.training.state import TrainState, create_optimizer, create_train_state
from zoo.training.steps import eval_step, loss_fn, train_step

__all__ = [
    "ConfigError",
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
