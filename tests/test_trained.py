"""zoo.load: a run directory back to a model that predicts what the run measured."""

import json
import os

import jax
import numpy as np
import pytest
from train_in_process import main as _main

import zoo
from zoo import data
from zoo.trained import RunError
from zoo.training import TrainConfig, train_and_evaluate

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn")
    config = TrainConfig(model="convnet", epochs=3, patience=1, batch_size=64, seed=1)
    results = train_and_evaluate(config, str(out), log=lambda line: None)
    return out, results


def test_a_loaded_classifier_reproduces_its_test_accuracy(cnn_run, monkeypatch, tmp_path):
    out, results = cnn_run
    monkeypatch.chdir(out.parent)
    trained = zoo.load(out.name)  # a relative path
    test = data.load_digits(seed=1).test
    probabilities = trained.predict(test.x)
    assert probabilities.shape == (len(test.x), 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)
    correct = int(np.sum(probabilities.argmax(-1) == test.y))
    assert correct == round(results["test_accuracy"] * len(test.y))  # every example alike
    assert trained.input_shape == (28, 28, 1) and trained.task == "classify"
    metrics = trained.evaluate(test)
    assert metrics["accuracy"] == results["test_accuracy"]
    assert metrics["loss"] == pytest.approx(results["test_loss"], rel=1e-6)
    logits = trained.model.apply(trained.variables, test.x[:5])
    np.testing.assert_allclose(np.asarray(logits).argmax(-1), probabilities[:5].argmax(-1))


def test_best_and_latest_parameters(cnn_run):
    out, results = cnn_run
    best, latest = zoo.load(out), zoo.load(out, which="latest")
    if results["best_epoch"] == results["epochs"]:
        pytest.skip("the last epoch was the best: nothing to tell apart")  # pragma: no cover
    differ = [
        not np.array_equal(a, b)
        for a, b in zip(
            np.concatenate([np.ravel(v) for v in _leaves(best.variables)]),
            np.concatenate([np.ravel(v) for v in _leaves(latest.variables)]),
            strict=True,
        )
    ]
    assert any(differ)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_one_checkpoint_directory_loads_too(cnn_run):
    out, _ = cnn_run
    steps = sorted(int(name) for name in os.listdir(out / "checkpoints") if name.isdigit())
    trained = zoo.load(out / "checkpoints" / str(steps[0]), which="latest")
    assert trained.step == steps[0]


def test_a_forecaster_predicts_in_its_datas_units(tmp_path):
    pytest.importorskip("statsmodels")
    out = tmp_path / "forecast"
    train_and_evaluate(TrainConfig.for_model("forecast", epochs=1), str(out), log=lambda _: None)
    trained = zoo.load(out)
    series = data.load_series()
    stats = json.loads((out / "dataset.json").read_text())["stats"]
    predicted = trained.predict(series.test.x)
    raw = np.asarray(trained.model.apply(trained.variables, series.test.x))
    np.testing.assert_allclose(predicted, raw * stats["std"] + stats["mean"], rtol=1e-5)


def test_a_language_model_samples_from_a_prompt(tmp_path):
    text = "abcabcabd " * 200
    path = tmp_path / "t.txt"
    path.write_text(text)
    out = tmp_path / "lm"
    config = TrainConfig(
        model="charlm", dataset="text", data_path=str(path), epochs=1, batch_size=8,
        model_options={"hidden_sizes": (16,), "embed_dim": 8},
    )  # fmt: skip
    train_and_evaluate(config, str(out), log=lambda line: None)
    trained = zoo.load(out)
    written = trained.sample("abc", length=30, temperature=0.5, seed=3)
    assert len(written) == 30 and set(written) <= set(trained.dataset["vocab"])
    assert written == trained.sample("abc", length=30, temperature=0.5, seed=3)
    with pytest.raises(ValueError, match=r"prompt characters \['z'\] are not in the model's"):
        trained.sample("abz")


def test_a_path_without_a_run_is_named(tmp_path, cnn_run):
    with pytest.raises(RunError, match="does not exist"):
        zoo.load(tmp_path / "nowhere")
    with pytest.raises(RunError, match="holds no run"):
        zoo.load(tmp_path)
    with pytest.raises(ValueError, match="which must be 'best' or 'latest'"):
        zoo.load(tmp_path, which="first")
    out, _ = cnn_run
    with pytest.raises(ValueError, match=r"takes inputs of shape \(batch, 28, 28, 1\), got"):
        zoo.load(out).predict(np.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match=r"got uint8: give it pixels in \[0, 1\], x.astype"):
        zoo.load(out).predict(np.zeros((2, 28, 28, 1), np.uint8))  # 0..255, not what it learned


def test_train_py_evaluate_gives_the_runs_test_metrics(cnn_run, capsys):
    out, results = cnn_run
    assert _main("evaluate", "--run", str(out)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test_accuracy"] == results["test_accuracy"]
    assert printed["test_macro_f1"] == pytest.approx(results["test_macro_f1"])


def test_train_py_predict_names_the_class_of_png_files(cnn_run, capsys, tmp_path):
    pytest.importorskip("PIL")
    from zoo.data.images import save_image_folder

    out, _ = cnn_run
    test = data.load_digits(seed=1).test
    trained = zoo.load(out)
    files = save_image_folder(tmp_path, test.x[:20], test.y[:20], [str(i) for i in range(10)])
    pixels, _ = zoo.trained.read_inputs(trained, files)
    right = trained.predict(pixels).argmax(-1) == test.y[:20]
    assert right.mean() > 0.5
    assert _main("predict", "--run", str(out), "--json", "--top-k", "2", *files) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["input"] for row in rows] == files
    for row, label, ok in zip(rows, test.y[:20], right, strict=True):
        assert len(row["top"]) == 2
        assert (row["top"][0]["class"] == str(label)) == ok
    assert _main("predict", "--run", str(out), files[0]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}: ")


def test_an_image_of_other_channels_is_converted_as_training_converts_it(cnn_run, capsys, tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    out, _ = cnn_run
    trained = zoo.load(out)
    digit = np.round(data.load_digits(seed=1).test.x[0, ..., 0] * 255).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "gray.png")
    Image.fromarray(np.repeat(digit[..., None], 3, axis=-1)).save(tmp_path / "rgb.png")
    files = [str(tmp_path / "gray.png"), str(tmp_path / "rgb.png")]
    pixels, _ = zoo.trained.read_inputs(trained, files)
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert _main("predict", "--run", str(out), *files) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split(": ")[1] == lines[1].split(": ")[1], lines
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        zoo.trained.read_inputs(zoo.load(out), [str(tmp_path / "broken.png")])


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "--run", "{tmp}"], "holds no run"),
        (["predict", "--run", "{run}"], "predict needs INPUT files"),
        (["predict", "--run", "{run}", "{tmp}/x.txt"], "cannot read"),
        (["predict", "--run", "{run}", "a.png", "--prompt", "hi"], "--prompt: not read by a"),
        (["predict", "--run", "{run}", "a.png", "--column", "v"], "--column: not read by a"),
    ],
)
def test_train_py_predict_errors_are_one_line(cnn_run, capsys, tmp_path, args, message):
    out, _ = cnn_run
    args = [a.format(tmp=tmp_path, run=out) for a in args]
    assert _main(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


EXPORTED_CALL = """
import sys
sys.modules["zoo"] = None  # this process cannot import zoo
import jax, numpy as np
jax.config.update("jax_platforms", "cpu")
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exported.call(x)))
"""


def test_an_exported_model_runs_without_zoo(cnn_run, tmp_path, capsys):
    import subprocess
    import sys

    out, _ = cnn_run
    exported = tmp_path / "cnn.jax"
    assert _main("export", "--run", str(out), "--out", str(exported)) == 0
    assert f"wrote {exported}" in capsys.readouterr().out
    trained = zoo.load(out)
    x = data.load_digits(seed=1).test.x[:7]  # any batch size
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "call.py"
    script.write_text(EXPORTED_CALL)
    files = [str(exported), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    result = subprocess.run(
        [sys.executable, str(script), *files], capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = np.asarray(trained.model.apply(trained.variables, x))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)


def test_fine_tuning_on_a_3_class_folder_keeps_all_but_the_head(cnn_run, tmp_path, capsys):
    pytest.importorskip("PIL")
    import jax

    from zoo.data.images import save_image_folder
    from zoo.training import create_train_state
    from zoo.training.state import initialize_from, model_for

    out, _ = cnn_run
    trained = zoo.load(out)
    config = TrainConfig(model="convnet", epochs=1, batch_size=16)
    state = create_train_state(model_for(config, 3, (28, 28, 1)), config, np.zeros((1, 28, 28, 1)))
    started, fresh = initialize_from(state, trained.variables["params"], {})
    assert len(fresh) == 2 and all("(10,)" in f or "10)" in f for f in fresh)  # the head only
    for (path, new), old in zip(
        jax.tree_util.tree_flatten_with_path(started.params)[0],
        jax.tree.leaves(trained.variables["params"]),
        strict=True,
    ):
        if new.shape == old.shape:
            np.testing.assert_array_equal(new, old, err_msg=jax.tree_util.keystr(path))

    digits = data.load_digits(seed=1)
    keep = digits.train.y < 3
    folder = tmp_path / "three"
    save_image_folder(folder, digits.train.x[keep][:150], digits.train.y[keep][:150], "abc")
    code = _main("--model", "convnet", "--dataset", "images", "--data-path", str(folder),
                 "--init-from", str(out), "--epochs", "2", "--batch-size", "16",
                 "--out", str(tmp_path / "tuned"))  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"initialised from {out}" in printed.out and "fresh for a new shape" in printed.out
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.8  # three digits, from features trained on ten

    with pytest.raises(ValueError, match="another architecture"):
        other = TrainConfig(model="lstm", epochs=1)
        lstm = create_train_state(model_for(other, 3, (28, 28)), other, np.zeros((1, 28, 28)))
        initialize_from(lstm, trained.variables["params"], {})


def test_a_tagger_of_characters_puts_the_spaces_back(tmp_path, capsys):
    """Trained on a user's text file (`--dataset words`), `tag` and `train.py predict --prompt`
    read text; the per-character tags reproduce the run's test accuracy."""
    path = tmp_path / "prose.txt"
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "off"]
    rng = np.random.default_rng(0)
    path.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)))
    out = tmp_path / "run"
    config = TrainConfig(
        model="tagger",
        dataset="words",
        data_path=str(path),
        epochs=2,
        model_options={"hidden_sizes": (8,)},
    )
    results = train_and_evaluate(config, str(out), log=lambda line: None)
    trained = zoo.load(out)
    test = data.load_word_boundaries_file(path).test
    valid = np.arange(64)[None, :] < test.lengths[:, None]
    probabilities = trained.predict(test.x, test.lengths)  # (N, 64, 2)
    correct = (probabilities.argmax(-1) == test.y)[valid]
    assert correct.mean() == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert results["majority_accuracy"] == pytest.approx(1 - np.mean(test.y[valid]))
    text = "thecatsatonamat" * 6  # longer than the model's 64 steps: tagged in pieces
    assert trained.tag(text).shape == (90, 2)
    assert _main("predict", "--run", str(out), "--prompt", text) == 0
    assert capsys.readouterr().out.replace(" ", "").strip() == text
    with pytest.raises(ValueError, match=r"characters \['!'\] are not in the model's vocabulary"):
        trained.tag("cat!")


def test_a_run_on_sequences_of_different_lengths_predicts_and_exports_any_length(tmp_path):
    rng = np.random.default_rng(0)
    with open(tmp_path / "seq.jsonl", "w") as f:
        for i in range(24):
            x = rng.normal(size=(int(rng.integers(2, 7)), 3)).round(3).tolist()
            f.write(json.dumps({"x": x, "y": i % 2}) + "\n")
    config = TrainConfig(
        model="lstm", dataset="arrays", data_path=str(tmp_path / "seq.jsonl"), epochs=1,
        batch_size=4, model_options={"hidden_sizes": (8,)},
    )  # fmt: skip
    train_and_evaluate(config, str(tmp_path / "run"), verbose=False)
    trained = zoo.load(tmp_path / "run")
    x, lengths = rng.normal(size=(3, 9, 3)).astype(np.float32), np.array([9, 4, 1])  # > 6 steps
    probabilities = trained.predict(x, lengths)
    exported = jax.export.deserialize(trained.export(("cpu",)))
    logits = np.asarray(exported.call(x, lengths.astype(np.int32)))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), probabilities, atol=1e-6)
    short = trained.predict(x[1:2, :4], lengths[1:2])  # the same sequence, padded less
    np.testing.assert_allclose(short, probabilities[1:2], atol=1e-6)


@pytest.mark.parametrize("name", ["tagger", "charlm", "forecast", "vae"])
def test_an_empty_batch_predicts_no_rows_of_one_examples_output(name):
    trained = zoo.pretrained(name)
    dtype = trained.dataset.get("input_dtype", "float32")
    one = np.zeros((1, *trained.input_shape), dtype)
    lengths = [np.ones(1, int)] if trained.dataset.get("variable_length") else []
    expected = trained.predict(one, *lengths)
    empty = trained.predict(one[:0], *(part[:0] for part in lengths))
    assert empty.shape == (0, *expected.shape[1:]) and empty.dtype == expected.dtype


def test_evaluate_refuses_labels_outside_the_models_classes(cnn_run):
    test = data.load_digits(seed=1).test
    with pytest.raises(ValueError, match="labels go from 5 up to 14; the model has num_classes 10"):
        zoo.load(cnn_run[0]).evaluate(test._replace(y=test.y + 5))


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A forecaster trained on a CSV of shuffled rows with gaps, its value column picked by the
    loader (the only one besides --time-column); and the values in time order."""
    pytest.importorskip("statsmodels")
    tmp = tmp_path_factory.mktemp("csv")
    values = np.round(50 + 30 * np.sin(np.arange(200) / 4) + np.arange(200) / 10, 3)
    cells = [f"{v:.3f}" for v in values]
    cells[60] = cells[190] = ""  # 190: in the window predict reads
    rows = [f"{day},{cell}\n" for day, cell in enumerate(cells)]
    order = np.random.default_rng(0).permutation(200)
    (tmp / "shuffled.csv").write_text("day,load\n" + "".join(rows[i] for i in order))
    (tmp / "sorted.csv").write_text("day,load\n" + "".join(rows))
    out = tmp / "run"
    code = _main("--model", "forecast", "--dataset", "csv",
                 "--data-path", str(tmp / "shuffled.csv"), "--time-column", "day",
                 "--missing", "interpolate", "--epochs", "1", "--quiet",
                 "--out", str(out))  # fmt: skip
    assert code == 0
    values[[60, 190]] = (values[[59, 189]] + values[[61, 191]]) / 2  # as interpolated
    return out, tmp, values


def test_predict_reads_a_csv_in_time_order_as_its_run_read_its_own(csv_run, capsys):
    out, tmp, values = csv_run
    trained = zoo.load(out)
    stats = trained.dataset["stats"]
    assert stats["column"] == "load"  # picked by the loader, recorded for predict
    x, _ = zoo.trained.read_inputs(trained, [str(tmp / "shuffled.csv")])
    expected = (values[-24:] - stats["mean"]) / stats["std"]
    np.testing.assert_allclose(x[0, :, 0], expected, rtol=1e-5, atol=1e-5)
    files = [str(tmp / "shuffled.csv"), str(tmp / "sorted.csv")]
    assert _main("predict", "--run", str(out), "--json", *files) == 0
    shuffled, ordered = json.loads(capsys.readouterr().out)
    assert shuffled["forecast"] == ordered["forecast"]
    np.testing.assert_allclose(shuffled["forecast"], trained.predict(x)[0], rtol=1e-5)


def test_evaluate_reads_a_csv_with_the_runs_options_and_statistics(csv_run, capsys, tmp_path):
    out, tmp, values = csv_run
    run_mse = json.loads((out / "metrics.json").read_text())["test_mse"]
    args = ("evaluate", "--run", str(out), "--dataset", "csv")
    assert _main(*args, "--data-path", str(tmp / "sorted.csv")) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["test_mse"] == pytest.approx(run_mse, rel=1e-5)
    # Ten times larger: the file's own statistics would hide it; the run's do not.
    rows = "".join(f"{day},{v * 10:.3f},0\n" for day, v in enumerate(values))
    (tmp_path / "larger.csv").write_text("day,load,other\n" + rows)
    assert _main(*args, "--data-path", str(tmp_path / "larger.csv"), "--missing", "error") == 0
    assert json.loads(capsys.readouterr().out)["test_mse"] > 10 * run_mse
    assert _main(*args, "--data-path", str(tmp_path / "larger.csv"), "--column", "other") == 0


def test_evaluate_reads_an_image_folder_as_its_run_did_and_checks_its_classes(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from zoo.data.images import save_image_folder

    digits = data.load_digits(seed=0).train
    keep = digits.y < 2
    x, y = digits.x[keep][:60], digits.y[keep][:60]
    files = save_image_folder(tmp_path / "pets", x, y, ["bird", "cat"])
    for name in files[::2]:  # half of them another size: --image-size makes them one
        Image.open(name).resize((20, 20)).save(name)
    out = tmp_path / "run"
    code = _main("--model", "convnet", "--dataset", "images", "--data-path", str(tmp_path / "pets"),
                 "--image-size", "28,28", "--epochs", "1", "--batch-size", "16", "--quiet",
                 "--out", str(out))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    args = ("evaluate", "--run", str(out), "--dataset", "images", "--data-path")
    assert _main(*args, str(tmp_path / "pets")) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    run_accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert printed["test_accuracy"] == run_accuracy
    save_image_folder(tmp_path / "letters", x, y, ["x", "y"])
    assert _main(*args, str(tmp_path / "letters")) == 2
    error = capsys.readouterr().err
    assert "has classes x, y; the run was trained on bird, cat" in error, error
