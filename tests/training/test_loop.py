import itertools
import json

import jax
import numpy as np
import pytest

from zoo import data, models
from zoo.data.splits import Dataset, Split
from zoo.training import (
    ConfigError,
    TrainConfig,
    create_train_state,
    evaluate,
    loss_fn,
    train_and_evaluate,
    train_step,
)
from zoo.training.loop import check_dataset

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return data.load_digits(seed=0)


def test_training_on_digits_lowers_the_loss(digits):
    config = TrainConfig(batch_size=32, seed=0)
    model = models.create("cnn")
    state = create_train_state(model, config, digits.train.x[:1])
    before = evaluate(state, digits.validation, 64, 10)
    for epoch in range(2):
        for batch in data.batches(digits.train, 32, seed=0, epoch=epoch):
            state, _ = train_step(state, batch)
    after = evaluate(state, digits.validation, 64, 10)
    assert int(state.step) == 2 * (len(digits.train.x) // 32)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > before["accuracy"] + 0.3


def test_train_step_updates_batch_norm_statistics_and_uses_dropout(digits):
    model = models.create("convnet", input_shape=(28, 28, 1), batch_norm=True, dropout=0.5)
    state = create_train_state(model, TrainConfig(), digits.train.x[:1])
    batch = next(data.batches(digits.train, 16))
    loss_a = loss_fn(state.params, state, batch, jax.random.key(1))[0]
    loss_b = loss_fn(state.params, state, batch, jax.random.key(2))[0]
    assert float(loss_a) != float(loss_b)  # dropout draws from the step's key
    stats_before = jax.tree.map(np.asarray, state.batch_stats)
    state, metrics = train_step(state, batch)
    assert float(metrics["count"]) == 16
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), stats_before, state.batch_stats)
    assert all(jax.tree.leaves(changed))


def test_train_and_evaluate_writes_metrics(tmp_path):
    config = TrainConfig(epochs=1, batch_size=64)
    lines = []
    results = train_and_evaluate(config, str(tmp_path), log=lines.append)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(results))
    for key in (
        "model",
        "dataset",
        "epochs",
        "test_accuracy",
        "test_macro_f1",
        "train_seconds",
        "examples_per_second",
    ):
        assert key in written
    assert written["steps"] == 1258 // 64
    assert np.sum(written["test_confusion_matrix"]) == 359
    assert any(line.startswith("epoch   1/1") for line in lines)
    assert not list(tmp_path.glob("*.tmp"))


def _dataset(train_x, train_y, num_classes=10) -> Dataset:
    empty = Split(train_x[:0], train_y[:0])
    return Dataset(Split(train_x, train_y), empty, empty, num_classes)


@pytest.mark.parametrize(
    "dataset, config, match",
    [
        (_dataset(np.zeros((0, 4, 4, 1)), np.zeros(0, int)), TrainConfig(), "empty training split"),
        (
            _dataset(np.zeros((5, 4, 4, 1)), np.zeros(5, int)),
            TrainConfig(batch_size=8),
            "batch_size 8 is larger than the 5 training examples",
        ),
        (
            _dataset(np.zeros((5, 4, 4, 1)), np.array([0, 1, 2, 3, 12])),
            TrainConfig(batch_size=2),
            r"train labels must be in \[0, 10\), found 0..12",
        ),
        (
            _dataset(np.full((5, 4, 4, 1), np.nan), np.zeros(5, int)),
            TrainConfig(batch_size=2),
            "NaN or infinite inputs",
        ),
    ],
)
def test_check_dataset_rejects_untrainable_data(dataset, config, match):
    with pytest.raises(ConfigError, match=match):
        check_dataset(dataset, config)


def test_model_options_cannot_override_dataset_shape(tmp_path):
    config = TrainConfig(model_options={"num_classes": 3})
    with pytest.raises(ConfigError, match="may not set num_classes"):
        train_and_evaluate(config, str(tmp_path))


def test_train_step_augments_on_device_deterministically(digits):
    model = models.create("cnn")
    batch = next(data.batches(digits.train, 16))

    def one_step(**options):
        state = create_train_state(model, TrainConfig(**options), digits.train.x[:1])
        return train_step(state, batch)[1]["loss_sum"]

    plain = one_step()
    augmented = one_step(augment=("shift", "rotate", "noise"))
    assert float(augmented) != float(plain)
    assert float(one_step(augment=("shift", "rotate", "noise"))) == float(augmented)
    assert float(one_step(augment=("shift", "rotate", "noise"), seed=1)) != float(augmented)


def test_augment_needs_image_inputs():
    sequences = _dataset(np.zeros((5, 28, 28)), np.zeros(5, int))
    with pytest.raises(ConfigError, match=r"augment needs images .* shape \(5, 28, 28\)"):
        check_dataset(sequences, TrainConfig(batch_size=2, augment=("shift",)))


def test_metrics_jsonl_has_one_line_per_epoch_and_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    config = TrainConfig(epochs=2, batch_size=128)
    results = train_and_evaluate(config, str(tmp_path), log=lambda _: None, plot=True)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(results["history"]))
    assert [line["epoch"] for line in lines] == [1, 2]
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_train_step_takes_the_hand_written_gradients(monkeypatch):
    """zoo's own step opts in (`runtime.hand_written_gradients`); its layers see it traced."""
    from zoo import runtime
    from zoo.data.batching import Batch
    from zoo.training import steps

    real, seen = runtime.using_hand_written_gradients, []
    monkeypatch.setattr(
        runtime, "using_hand_written_gradients", lambda: seen.append(real()) or seen[-1]
    )
    x = np.zeros((4, 28, 28, 1), np.float32)
    state = create_train_state(models.create("cnn"), TrainConfig(), x[:1])
    batch = Batch(x, np.zeros(4, np.int32), np.ones(4, bool))
    assert seen == [False] * 5  # init: plain layers
    seen.clear()
    jax.make_jaxpr(steps.train_step_fn)(state, batch)
    assert len(seen) == 5 and all(seen) == (jax.default_backend() == "cpu")  # 3 convs, 2 pools


def test_a_library_user_trains_on_their_own_dataset(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120).astype(np.int32)
    x = (rng.normal(size=(120, 5, 2)) + y[:, None, None]).astype(np.float32)
    lengths = rng.integers(2, 6, 120).astype(np.int32)
    splits = [Split(x[a:b], y[a:b], lengths[a:b]) for a, b in ((0, 80), (80, 100), (100, 120))]
    dataset = Dataset(*splits, num_classes=3, class_names=("low", "mid", "high"))
    config = TrainConfig(
        model="gru", dataset="mine", epochs=2, batch_size=16,
        model_options={"hidden_sizes": (8,)},
    )  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), dataset=dataset, log=lambda line: None)
    assert results["dataset"] == "mine" and results["epochs"] == 2
    described = json.loads((tmp_path / "dataset.json").read_text())
    assert described["class_names"] == ["low", "mid", "high"]
    assert described["input_shape"] == [5, 2] and described["variable_length"] is True
    assert described["sizes"] == {"train": 80, "validation": 20, "test": 20}


def _ragged_dataset(n=120, steps=24):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n).astype(np.int32)
    lengths = rng.integers(2, steps + 1, n).astype(np.int32)
    x = rng.normal(size=(n, steps, 2)) + y[:, None, None]
    x = np.where(np.arange(steps)[None, :, None] < lengths[:, None, None], x, 0)
    splits = [
        Split(x[a:b].astype(np.float32), y[a:b], lengths[a:b])
        for a, b in ((0, 80), (80, 100), (100, n))
    ]  # noqa: E501
    return Dataset(*splits, num_classes=3)


def test_bucketing_by_length_trains_on_cut_batches_and_needs_lengths(tmp_path, monkeypatch):
    shapes = []
    original = data.batching.read_batch
    monkeypatch.setattr(
        data.streaming,
        "read_batch",
        lambda *a, **k: shapes.append((b := original(*a, **k)).x.shape) or b,
    )
    config = TrainConfig(
        model="gru", dataset="mine", epochs=2, batch_size=8, bucket_by_length=True,
        model_options={"hidden_sizes": (8,)},
    )  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), dataset=_ragged_dataset(), log=print)
    assert np.isfinite(results["test_loss"]) and len(shapes) == 20
    assert {s[1] for s in shapes} <= {8, 16, 24} and len({s[1] for s in shapes}) > 1
    with pytest.raises(ConfigError, match="bucket_by_length needs sequences of different"):
        check_dataset(data.load_digits(seed=0), TrainConfig(bucket_by_length=True))


@pytest.mark.slow
def test_grain_data_workers_train_the_same_run_and_a_run_resumes_across_them(tmp_path):
    pytest.importorskip("grain")
    from zoo.training.loop import Preempted

    config = TrainConfig(
        model="gru", dataset="mine", epochs=2, batch_size=8, bucket_by_length=True,
        model_options={"hidden_sizes": (8,)},
    )  # fmt: skip
    dataset = _ragged_dataset()
    quiet = {"dataset": dataset, "log": lambda line: None}
    alone = train_and_evaluate(config, str(tmp_path / "alone"), **quiet)
    with pytest.raises(Preempted):
        train_and_evaluate(
            config, str(tmp_path / "cut"), stop_after_steps=13, data_workers=2, **quiet
        )  # noqa: E501
    resumed = train_and_evaluate(
        config, str(tmp_path / "cut"), resume=True, data_workers=2, **quiet
    )  # noqa: E501
    assert resumed["resumed_from_step"] == 13
    for key in ("test_loss", "test_accuracy"):
        assert resumed[key] == alone[key]
    with pytest.raises(ConfigError, match="data_workers must be >= 0"):
        train_and_evaluate(config, str(tmp_path / "bad"), data_workers=-1, **quiet)


def _small_images(n_validation=12, n_test=12, seed=0) -> Dataset:
    """3 classes of 8x8 images, brighter by class: 48 train examples, then the held-out ones."""
    rng = np.random.default_rng(seed)
    n = 48 + n_validation + n_test
    y = rng.integers(0, 3, n).astype(np.int32)
    x = np.clip(rng.normal(0.3 * y[:, None, None, None], 0.2, (n, 8, 8, 1)), 0, 1)
    x = x.astype(np.float32)
    cuts = (0, 48, 48 + n_validation, n)
    splits = [Split(x[a:b], y[a:b]) for a, b in itertools.pairwise(cuts)]
    return Dataset(*splits, num_classes=3)


_SMALL = {"model": "convnet", "dataset": "mine", "batch_size": 16, "seed": 1}


def test_a_dataset_without_test_examples_trains_and_writes_its_validation_metrics(tmp_path):
    lines = []
    config = TrainConfig(**_SMALL, epochs=2, patience=1)
    results = train_and_evaluate(
        config, str(tmp_path), dataset=_small_images(n_test=0), log=lines.append
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert written["test_examples"] == 0 and not [
        k for k in written if k.startswith("test_") and k != "test_examples"
    ]
    best = written["history"][written["best_epoch"] - 1]
    assert {k: v for k, v in best.items() if k.startswith("val_")} == {
        k: v for k, v in written.items() if k.startswith("val_")
    }
    assert "val_accuracy" in written
    assert "test | skipped: dataset 'mine' has no test examples" in lines[-1]


def test_a_dataset_without_validation_or_test_examples_trains_without_early_stopping(tmp_path):
    dataset = _small_images(n_validation=0, n_test=0)
    with pytest.raises(ConfigError, match=r"patience 3 needs a validation split.*patience to 0"):
        check_dataset(dataset, TrainConfig(**_SMALL, patience=3))
    config = TrainConfig(**_SMALL, epochs=1, patience=0)  # 0: off, as --patience 0
    results = train_and_evaluate(config, str(tmp_path), dataset=dataset, log=lambda _: None)
    assert results["test_examples"] == 0 and results["epochs"] == 1
    assert not [k for k in results if k.startswith(("val_", "test_")) and k != "test_examples"]
    assert (tmp_path / "metrics.json").exists()


def test_summarizing_no_metrics_names_the_empty_split():
    from zoo.training.steps import summarize_metrics

    with pytest.raises(ValueError, match="the evaluated split has no examples"):
        summarize_metrics([])


def _comparable(results):
    history = [
        {k: v for k, v in r.items() if k != "examples_per_second"} for r in results["history"]
    ]
    test = {k: v for k, v in results.items() if k.startswith(("test_", "val_"))}
    return results["steps"], history, test


def test_resuming_a_finished_run_with_more_epochs_trains_them_as_one_run_would(tmp_path):
    dataset, quiet = _small_images(), {"log": lambda _: None}
    whole = train_and_evaluate(
        TrainConfig(**_SMALL, epochs=2), str(tmp_path / "whole"), dataset=dataset, **quiet
    )
    train_and_evaluate(
        TrainConfig(**_SMALL, epochs=1), str(tmp_path / "cut"), dataset=dataset, **quiet
    )
    lines = []
    extended = train_and_evaluate(
        TrainConfig(**_SMALL, epochs=2),
        str(tmp_path / "cut"),
        dataset=dataset,
        resume=True,
        log=lines.append,
    )
    assert extended["resumed_from_step"] == 3 and extended["epochs"] == 2
    assert _comparable(extended) == _comparable(whole)
    assert any("continuing the finished run at step 3 to 2 epochs" in line for line in lines)


def test_resuming_a_finished_run_with_its_own_epochs_trains_nothing_and_says_why(tmp_path):
    dataset, config = _small_images(), TrainConfig(**_SMALL, epochs=1)
    first = train_and_evaluate(config, str(tmp_path), dataset=dataset, log=lambda _: None)
    lines = []
    again = train_and_evaluate(
        config, str(tmp_path), dataset=dataset, resume=True, log=lines.append
    )
    assert again["steps"] == first["steps"] and again["test_loss"] == first["test_loss"]
    assert any("resumed the finished run at step 3; all its 1 epochs" in line for line in lines)


@pytest.mark.parametrize(
    "schedule, epochs, match",
    [
        ("cosine", 3, r"schedule 'cosine' decays the learning rate over all of a run's epochs \(2"),
        ("constant", 1, r"epochs 1: the run has trained 2 epochs \(step 6\)"),
    ],
)
def test_resuming_with_epochs_the_run_cannot_honour_is_refused(tmp_path, schedule, epochs, match):
    dataset, quiet = _small_images(), {"log": lambda _: None}
    config = TrainConfig(**_SMALL, epochs=2, schedule=schedule)
    train_and_evaluate(config, str(tmp_path), dataset=dataset, **quiet)
    longer = TrainConfig(**{**config.to_dict(), "epochs": epochs})
    with pytest.raises(ConfigError, match=match):
        train_and_evaluate(longer, str(tmp_path), dataset=dataset, resume=True, **quiet)
