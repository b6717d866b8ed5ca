"""train.py as a user runs it: a real subprocess, real flags."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("sklearn")


def run_cli(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_trains_and_writes_metrics(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--model",
        "convnet",
        "--model-option",
        "features=(8,16)",
        "--model-option",
        "pool=avg",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "epoch   1/1" in result.stdout and "| test_accuracy " in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "convnet" and metrics["config"]["model_options"]["features"] == [
        8,
        16,
    ]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_model_preset_picks_its_dataset(tmp_path):
    pytest.importorskip("statsmodels")
    result = run_cli("--model", "forecast", "--epochs", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "series" and "naive_mse" in metrics and "test_mse" in metrics


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--epochs", "three"], "argument --epochs: invalid int value"),
        (["--lr", "-0.1"], "--lr must be > 0"),
        (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
        (["--optimizer", "adagrad"], "--optimizer must be one of adam, sgd, rmsprop"),
        (["--batch-size", "5000"], "--batch-size 5000 is larger than the 1258 training examples"),
        (["--dataset", "mnist"], "mnist dataset needs a path"),
        (["--dataset", "mnist", "--data-path", "/nope.npz"], "/nope.npz"),
        (["--model-option", "features"], "--model-option expects KEY=VALUE"),
        (["--model-option", "depth=3"], "model 'cnn' has no option depth"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (
            ["--dataset", "series"],
            "model 'cnn' is a classify model but dataset 'series' is a regress",
        ),
        (["--model", "charlm", "--dataset", "digits"], "'charlm' is a language model"),
        (
            ["--model", "lstm", "--dataset", "digits"],
            "recurrent layers take (batch, steps, features)",
        ),
    ],
)
def test_bad_flags_exit_nonzero_with_one_line(tmp_path, args, flag):
    result = run_cli(*args, "--out", str(tmp_path))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and flag in errors[0], result.stderr
    assert not (tmp_path / "metrics.json").exists()
