"""train.py on the user's own files: text, CSV, arrays, ragged sequences, image folders."""

import json
import os

import numpy as np
import pytest
from train_in_process import main as _main


def _read(out, name):
    return json.loads((out / name).read_text())


def _one_line_error(capsys, code, *parts):
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and all(part in lines[0] for part in parts), lines


@pytest.mark.parametrize(
    "args, parts",
    [
        (["--dataset", "digits", "--data-path", "x.png"], ["--data-path", "'digits'", "bundled"]),
        (["--dataset", "csv"], ["--dataset 'csv' needs --data-path", "a CSV file"]),
        (["--dataset", "images"], ["--dataset 'images' needs --data-path"]),
        (["--dataset", "arrays"], ["--dataset 'arrays' needs --data-path"]),
        (["--image-size", "8,8"], ["--image-size is not read by dataset 'digits'", "images"]),
        (["--dataset", "text", "--column", "v"], ["--column is not read by dataset 'text'"]),
        (["--missing", "ffill", "--model", "forecast"], ["--missing", "'series'", "csv"]),
        (["--image-size", "8"], ["--image-size: expected HEIGHT,WIDTH, got '8'"]),
    ],
)
def test_a_data_flag_is_never_ignored(tmp_path, capsys, args, parts):
    _one_line_error(capsys, _main(*args, "--out", str(tmp_path)), *parts)
    assert not os.listdir(tmp_path)


def test_charlm_trains_on_a_text_file_and_saves_its_vocabulary(tmp_path, capsys):
    text = "".join(f"the {w} sat on the mat. " for w in ("cat", "dog", "rat") * 60) + "Zebra!"
    path = tmp_path / "tiny.txt"
    path.write_text(text)
    out = tmp_path / "run"
    code = _main(
        "--model", "charlm", "--dataset", "text", "--data-path", str(path), "--epochs", "1",
        "--batch-size", "8", "--model-option", "hidden_sizes=(16,)", "--out", str(out),
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    described = _read(out, "dataset.json")
    assert set(described["vocab"]) == set(text[: int(len(text) * 0.9)]) | {"\ufffd"}
    assert described["stats"]["unknown_characters"] == 3  # "Z", "b", "!" only after training
    assert "3 validation and test characters are not in the training" in capsys.readouterr().out
    assert np.isfinite(_read(out, "metrics.json")["test_loss"])


def test_forecast_trains_on_a_csv_with_gaps(tmp_path, capsys):
    values = [f"{50 + 30 * np.sin(i / 4):.2f}" for i in range(160)]
    values[10] = values[77] = ""
    path = tmp_path / "load.csv"
    path.write_text("day,load\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    base = ("--model", "forecast", "--dataset", "csv", "--data-path", str(path), "--epochs", "1",
            "--column", "load")  # fmt: skip
    _one_line_error(capsys, _main(*base, "--out", str(tmp_path / "a")), "line 12", "--missing")
    out = tmp_path / "run"
    code = _main(*base, "--time-column", "day", "--missing", "interpolate", "--out", str(out))
    assert code == 0, capsys.readouterr().err
    stats = _read(out, "dataset.json")["stats"]
    train = np.array([float(v or "nan") for v in values[:112]])
    assert stats["mean"] == pytest.approx(np.nanmean(train), abs=0.5)
    metrics = _read(out, "metrics.json")
    assert metrics["config"]["data_path"] == str(path) and np.isfinite(metrics["test_mse"])


def test_a_classifier_trains_on_an_npz_of_images(tmp_path, capsys):
    from zoo.data import load_digits

    digits = load_digits()  # 28x28, as the seed CNN expects
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        x=np.concatenate([s.x for s in digits[:3]]),
        y=np.concatenate([s.y for s in digits[:3]]),
    )
    out = tmp_path / "run"
    code = _main("--model", "cnn", "--dataset", "arrays", "--data-path", str(path),
                 "--epochs", "2", "--batch-size", "64", "--out", str(out))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    described = _read(out, "dataset.json")
    assert described["input_shape"] == [28, 28, 1] and described["num_classes"] == 10
    assert described["sizes"] == {"train": 1258, "validation": 180, "test": 359}  # 0.1, 0.2
    assert _read(out, "metrics.json")["test_accuracy"] > 0.5


def test_ragged_sequences_train_with_their_lengths(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(200):
        label = i % 2
        steps = int(rng.integers(3, 12))
        x = rng.normal(size=(steps, 2)) + (2 * label - 1)  # the class shows at every step
        lines.append(json.dumps({"x": x.round(3).tolist(), "y": label}))
    path = tmp_path / "seqs.jsonl"
    path.write_text("\n".join(lines))
    out = tmp_path / "run"
    code = _main("--model", "gru", "--dataset", "arrays", "--data-path", str(path),
                 "--epochs", "5", "--batch-size", "16", "--lr", "1e-2",
                 "--model-option", "hidden_sizes=(8,)",
                 "--out", str(out))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert _read(out, "dataset.json")["variable_length"] is True
    assert _read(out, "metrics.json")["test_accuracy"] > 0.9
    _one_line_error(
        capsys,
        _main(
            "--model",
            "cnn",
            "--dataset",
            "arrays",
            "--data-path",
            str(path),
            "--out",
            str(tmp_path / "cnn"),
        ),  # fmt: skip
        "sequences of different lengths",
        "'cnn'",
    )


NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digit_folder(root, images, labels, suffix=".png"):
    from zoo.data.images import save_image_folder

    return save_image_folder(root, images, labels, NAMES, suffix=suffix)


def test_a_cnn_trains_on_an_image_folder_of_its_own_shape(tmp_path, capsys):
    from zoo.data import load_digits

    digits = load_digits(image_size=8)
    root = tmp_path / "images"
    keep = digits.train.y < 5  # 5 classes
    write_digit_folder(root / "train", digits.train.x[keep], digits.train.y[keep])
    write_digit_folder(root / "test", digits.test.x[:40], digits.test.y[:40] % 5, ".jpg")
    out = tmp_path / "run"
    code = _main("--model", "convnet", "--dataset", "images", "--data-path", str(root),
                 "--image-size", "12,12", "--channels", "3", "--epochs", "1",
                 "--out", str(out))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    described = _read(out, "dataset.json")
    assert described["class_names"] == ["four", "one", "three", "two", "zero"]
    assert described["input_shape"] == [12, 12, 3] and described["num_classes"] == 5
    assert described["sizes"] == {"train": int(keep.sum()), "validation": 0, "test": 40}
    assert os.listdir(out / "cache")  # decoded pixels are kept for the next epochs


def test_bad_image_folders_exit_2_naming_the_file(tmp_path, capsys):
    from zoo.data import load_digits

    digits = load_digits(image_size=8)
    root = tmp_path / "images"
    write_digit_folder(root, digits.train.x[:30], digits.train.y[:30] % 3)
    broken = sorted((root / "zero").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])
    base = ("--model", "convnet", "--dataset", "images", "--data-path", str(root), "--epochs", "1")
    _one_line_error(capsys, _main(*base, "--out", str(tmp_path / "a")), str(broken))
    code = _main(*base, "--skip-bad-files", "--batch-size", "8", "--out", str(tmp_path / "b"))
    assert code == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out
