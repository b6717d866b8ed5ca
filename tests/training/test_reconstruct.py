"""The reconstruction tasks: losses and metrics against NumPy, the datasets they take, and a short
train.py run of a VAE through `zoo.load`, predict, evaluate and export."""

import json

import jax
import numpy as np
import pytest
from train_in_process import main

import zoo
from zoo import data, models
from zoo.data.batching import Batch
from zoo.data.splits import Dataset, Split
from zoo.training import (
    ConfigError,
    TrainConfig,
    create_train_state,
    evaluate,
    train_and_evaluate,
)
from zoo.training.loop import check_dataset, dataset_for_model
from zoo.training.metrics import mean_image_mse
from zoo.training.plots import image_grid
from zoo.training.steps import compute_metrics, summarize_metrics


def numpy_bernoulli_nll(x, p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1).sum(-1)


def numpy_kl(mean, logvar):
    return 0.5 * np.sum(np.exp(logvar) + mean**2 - 1 - logvar, axis=-1)


def _images(rng, shape=(3, 4, 5, 2)):
    return rng.uniform(size=shape).astype(np.float32)


def test_reconstruct_loss_is_the_masked_mean_squared_error_per_pixel():
    rng = np.random.default_rng(0)
    x, reconstruction = _images(rng), _images(rng)
    mask = np.array([True, False, True])
    sums = compute_metrics("reconstruct", reconstruction, Batch(x, np.zeros(3), mask))
    errors = ((reconstruction - x) ** 2).reshape(3, -1).mean(-1)
    assert float(sums["count"]) == 2
    assert float(sums["loss_sum"]) == pytest.approx(errors[mask].sum(), rel=1e-5)


def test_vae_loss_is_the_negative_elbo_with_its_terms_apart():
    rng = np.random.default_rng(1)
    x, probabilities = _images(rng), _images(rng)
    probabilities[0, 0, 0, 0] = 0.0  # saturated: clipped, finite
    mean, logvar = rng.normal(size=(3, 6)), rng.normal(scale=0.3, size=(3, 6))
    outputs = models.VAEOutput(probabilities, mean.astype(np.float32), logvar.astype(np.float32))
    mask = np.array([True, True, False])
    sums = compute_metrics("vae", outputs, Batch(x, np.zeros(3), mask))
    nll, kl = numpy_bernoulli_nll(x, probabilities), numpy_kl(mean, logvar)
    mse = ((probabilities - x) ** 2).reshape(3, -1).mean(-1)
    assert float(sums["count"]) == 2
    for name, expected in (("reconstruction", nll), ("kl", kl), ("mse", mse), ("loss", nll + kl)):
        assert float(sums[f"{name}_sum"]) == pytest.approx(expected[mask].sum(), rel=1e-5), name
    summary = summarize_metrics([sums, sums])
    assert summary["loss"] == pytest.approx(summary["reconstruction"] + summary["kl"], rel=1e-6)
    assert summary["kl"] == pytest.approx(kl[mask].mean(), rel=1e-5)
    assert set(summary) == {"loss", "reconstruction", "kl", "mse"}


def test_mean_image_mse_matches_numpy_chunk_by_chunk():
    rng = np.random.default_rng(2)
    train, test = Split(_images(rng, (7, 3, 2, 1)), None), Split(_images(rng, (5, 3, 2, 1)), None)
    expected = ((test.x - train.x.mean(0)) ** 2).mean()
    assert mean_image_mse(train, test, chunk=3) == pytest.approx(expected, rel=1e-6)


def _dataset(x, task="classify"):
    split = Split(x, np.zeros(len(x), np.int32))
    return Dataset(split, split, split, num_classes=2, task=task)


def test_reconstruction_models_take_any_images_of_pixels_in_0_1():
    assert TrainConfig.for_model("autoencoder").dataset == "digits"
    config = TrainConfig.for_model("vae", batch_size=2)
    assert config.dataset == "digits"
    labelled = _dataset(np.full((4, 6, 6, 1), 0.5, np.float32))
    images = dataset_for_model(labelled, "vae")
    assert images.task == "vae" and dataset_for_model(labelled, "cnn").task == "classify"
    check_dataset(images, config)
    series = dataset_for_model(_dataset(np.zeros((4, 24, 1), np.float32), "regress"), "vae")
    with pytest.raises(ConfigError, match=r"reconstructs images .* inputs of shape \(4, 24, 1\)"):
        check_dataset(series, config)
    raw = dataset_for_model(_dataset(np.full((4, 6, 6, 1), 255.0, np.float32)), "autoencoder")
    with pytest.raises(ConfigError, match=r"pixels in \[0, 1\].*found 255..255; scale them"):
        check_dataset(raw, TrainConfig(model="autoencoder", batch_size=2))


def test_arrays_without_labels_feed_a_reconstruction_model(tmp_path):
    path = tmp_path / "pixels.npz"
    np.savez(path, x=np.random.default_rng(3).uniform(size=(10, 4, 4, 1)))
    dataset = data.load("arrays", path=str(path), task="reconstruct")
    assert dataset.task == "reconstruct" and len(dataset.train.x) == 7
    assert dataset.train.x.dtype == np.float32 and not dataset.train.y.any()


def test_vae_evaluation_draws_the_same_noise_every_time():
    model = models.create("vae", input_shape=(4, 4, 1), features=(2,), latent_dim=2)
    x = np.random.default_rng(4).uniform(size=(6, 4, 4, 1)).astype(np.float32)
    split = Split(x, np.zeros(6, np.int32))
    state = create_train_state(model, TrainConfig(batch_size=4), x[:1], "vae")
    first, second = evaluate(state, split, 4, 1), evaluate(state, split, 4, 1)
    assert first == second and set(first) == {"loss", "elbo", "kl", "reconstruction", "mse"}
    assert first["elbo"] == -first["loss"]
    assert first["loss"] == pytest.approx(first["reconstruction"] + first["kl"], rel=1e-6)
    at_mean = models.reconstruct(model, {"params": state.params}, x)
    assert first["mse"] != pytest.approx(float(((at_mean - x) ** 2).mean()), rel=1e-6)  # sampled


def test_image_grid_tiles_row_by_row_with_gaps():
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1) + 10
    grid = image_grid(images, columns=2, gap=1, fill=-1.0)
    assert grid.shape == (5, 5, 1)
    assert grid[1, 1, 0] == 10 and grid[1, 3, 0] == 11 and grid[3, 1, 0] == 12
    assert grid[3, 3, 0] == -1 and grid[0].max() == -1  # the missing image and the gap


@pytest.mark.slow
@pytest.mark.optimized
def test_an_autoencoder_trains_on_arrays_without_labels_and_beats_the_mean_image(tmp_path):
    pytest.importorskip("matplotlib")
    digits = data.load_digits(image_size=8)
    path = tmp_path / "digits.npz"
    np.savez(path, x=digits.train.x, x_test=digits.test.x)
    config = TrainConfig(
        model="autoencoder",
        dataset="arrays",
        data_path=str(path),
        epochs=8,
        batch_size=16,
        learning_rate=3e-3,
        model_options={"features": (8,), "latent_dim": 8},
    )
    results = train_and_evaluate(config, str(tmp_path / "run"), log=lambda line: None, plot=True)
    assert results["task"] == "reconstruct" and results["monitor"] == "val_loss"
    assert results["test_mse"] < 0.5 * results["mean_image_mse"]
    assert (tmp_path / "run" / "reconstructions.png").exists()
    assert not (tmp_path / "run" / "samples.png").exists()


@pytest.mark.slow
def test_a_short_vae_run_reports_the_elbo_plots_and_serves_reconstructions(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    run = tmp_path / "vae"
    options = ("--model-option", "features=(4,8)", "--model-option", "latent_dim=2")
    status = main(
        *("--model", "vae", "--epochs", "2", "--batch-size", "64", *options),
        *("--monitor", "val_elbo", "--patience", "3", "--plot", "--quiet", "--out", str(run)),
    )
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "vae" and metrics["dataset"] == "digits"
    assert metrics["test_elbo"] == pytest.approx(-metrics["test_loss"])
    assert metrics["test_loss"] == pytest.approx(
        metrics["test_reconstruction"] + metrics["test_kl"], rel=1e-6
    )
    assert 0 < metrics["test_mse"] and 0 < metrics["mean_image_mse"] < 0.1
    assert {"train_kl", "val_elbo", "val_reconstruction"} <= set(metrics["history"][-1])
    for name in ("curves.png", "reconstructions.png", "samples.png"):
        assert (run / name).stat().st_size > 1000, name
    assert not (run / "confusion.png").exists()

    trained = zoo.load(run)
    x = data.load_digits().test.x[:5]
    reconstructions = trained.predict(x)
    assert reconstructions.shape == (5, 28, 28, 1)
    assert 0 <= reconstructions.min() and reconstructions.max() <= 1
    np.testing.assert_allclose(
        reconstructions, models.reconstruct(trained.model, trained.variables, x), rtol=1e-6
    )
    test_metrics = trained.evaluate(data.load_digits().test)
    assert test_metrics["elbo"] == pytest.approx(metrics["test_elbo"], rel=1e-5)
    exported = jax.export.deserialize(trained.export(("cpu",)))
    np.testing.assert_allclose(exported.call(x), reconstructions, rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    assert main("evaluate", "--run", str(run)) == 0
    assert json.loads(capsys.readouterr().out)["test_elbo"] == pytest.approx(metrics["test_elbo"])
    np.save(tmp_path / "digit.npy", x[0])
    assert main("predict", "--run", str(run), str(tmp_path / "digit.npy"), "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    expected = float(((reconstructions[0] - x[0]) ** 2).mean())
    assert row["reconstruction_mse"] == pytest.approx(expected, rel=1e-5)
