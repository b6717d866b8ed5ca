import jax
import numpy as np
import pytest

from zoo.training import ConfigError, TrainConfig, loop, train_and_evaluate
from zoo.training.early_stopping import EarlyStopping, check_monitor


def _epochs_run(stopper, values):
    for epoch, value in enumerate(values, 1):
        stopper.update(epoch, value)
        if stopper.should_stop:
            return epoch
    return len(values)


def test_stops_after_patience_epochs_without_improvement():
    stopper = EarlyStopping("val_accuracy", patience=2)
    assert _epochs_run(stopper, [0.5, 0.8, 0.7, 0.8, 0.9]) == 4
    assert (stopper.best_epoch, stopper.best) == (2, 0.8)


def test_min_delta_and_direction():
    stopper = EarlyStopping("val_loss", patience=2, min_delta=0.05)
    # 0.97 and 0.96 are within min_delta of 1.0: no improvement
    assert _epochs_run(stopper, [1.0, 0.97, 0.96, 0.5]) == 3
    assert stopper.best_epoch == 1
    never = EarlyStopping("val_loss")
    assert _epochs_run(never, [1.0, 2.0, 3.0, 4.0, 0.5]) == 5 and never.best_epoch == 5


def test_monitor_must_suit_the_task():
    with pytest.raises(ConfigError, match="monitor 'val_accuracy' is not reported for regress"):
        check_monitor("val_accuracy", "regress")


def test_stops_and_evaluates_the_best_parameters(tmp_path, monkeypatch):
    """Scripted validation accuracy peaks at epoch 2; the test split must see epoch 2's params."""
    pytest.importorskip("sklearn")
    scripted = iter([0.5, 0.8, 0.7, 0.6, 0.95])
    seen = []  # (split size, fingerprint of the params evaluated)
    real_evaluate = loop.evaluate

    def fake_evaluate(state, split, batch_size, num_classes, layout):
        result = real_evaluate(state, split, batch_size, num_classes, layout)
        fingerprint = float(sum(np.sum(leaf) for leaf in jax.tree.leaves(state.params)))
        seen.append((len(split.y), fingerprint))
        if len(split.y) == 180:  # the validation split
            result["accuracy"] = next(scripted)
        return result

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    config = TrainConfig(epochs=10, batch_size=128, patience=2)
    results = train_and_evaluate(config, str(tmp_path), log=lambda _: None)
    assert results["epochs"] == 4 and results["best_epoch"] == 2
    assert results["monitor_value"] == 0.8
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    validation = [fp for size, fp in seen if size == 180]
    test = [fp for size, fp in seen if size == 359]
    assert test == [validation[1]] and validation[1] != validation[3]


def test_a_run_checks_the_monitor_against_its_task(tmp_path):
    pytest.importorskip("statsmodels")
    with pytest.raises(ConfigError, match="monitor 'val_accuracy' is not reported"):
        train_and_evaluate(
            TrainConfig.for_model("forecast", patience=2, monitor="val_accuracy"), str(tmp_path)
        )
