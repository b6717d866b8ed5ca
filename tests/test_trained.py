"""zoo.load: a run directory back to a model that predicts what the run measured."""

import json
import os

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


def test_a_color_image_for_a_grayscale_model_is_refused(cnn_run, capsys, tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    out, _ = cnn_run
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert _main("predict", "--run", str(out), str(tmp_path / "rgb.png")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "rgb.png is a color (RGB) image (mode RGB)" in lines[0], lines
    assert "was trained on grayscale images: convert it first" in lines[0]
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
