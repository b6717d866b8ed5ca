"""train.py as a user runs it: a real subprocess, real flags."""

import json
import os
import re
import subprocess
import sys

import pytest
from train_in_process import main as _main
from train_in_process import train_module

from zoo.training import ConfigError

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
        (["--optimizer", "adagrad"], "--optimizer must be one of adam, adamw, sgd, rmsprop"),
        (["--batch-size", "5000"], "--batch-size 5000 is larger than the 1258 training examples"),
        (["--dataset", "mnist"], "--dataset 'mnist' needs --data-path: mnist.npz or IDX"),
        (["--dataset", "mnist", "--data-path", "/nope.npz"], "/nope.npz"),
        (["--model-option", "features"], "--model-option expects KEY=VALUE"),
        (["--model-option", "depth=3"], "model 'cnn' has no option depth"),
        (
            ["--model", "convnet", "--model-option", "features=(16,32"],
            "--model-option features=(16,32 is not a valid Python literal",
        ),
        (["--model", "lstm", "--model-option", "reset_after=False"], "it applies to: bigru, gru"),
        (
            ["--dataset", "mnist", "--data-path", os.path.join(ROOT, "README.md")],
            "README.md is not an npz (zip) archive",
        ),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--data-workers", "-1"], "--data-workers must be >= 0, got -1"),
        (["--bucket-by-length"], "--bucket-by-length needs sequences of different lengths"),
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
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, args, flag):
    assert _main(*args, "--out", str(tmp_path)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and flag in errors[0], errors
    assert not (tmp_path / "metrics.json").exists()


def test_a_bad_flag_exits_2_from_a_real_process(tmp_path):
    result = run_cli("--lr", "-0.1", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip() == (
        "train.py: error: --lr must be > 0, got -0.1"
    )


@pytest.mark.parametrize(
    "value", ["(16,32", "[8, 16", "16,,32", "3x", "-", "(relu, tanh)", "{1:", "'avg"]
)
def test_a_model_option_that_looks_like_a_literal_must_parse(value):
    train = train_module()
    with pytest.raises(ConfigError, match=rf"--model-option features={re.escape(value)} is not a"):
        train.parse_model_options([f"features={value}"])


def test_model_option_bare_words_and_literals():
    train = train_module()
    pairs = ["pool=avg", "cell=gru", "features=(8, 16)", "dropout=0.5", "pool_size=-1", "bias=None"]
    assert train.parse_model_options(pairs) == {
        "pool": "avg",
        "cell": "gru",
        "features": (8, 16),
        "dropout": 0.5,
        "pool_size": -1,
        "bias": None,
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--augment", "shift,blur"],
            "--augment must be one of flip, rotate, shift, noise, got 'blur'",
        ),
        (["--augment", "shift", "--model", "lstm"], "augment needs images"),
        (["--patience", "-1"], "--patience must be >= 0"),
        (["--schedule", "warmup_cosine"], "--warmup-steps must be >= 1 with schedule"),
        (["--schedule", "warmup_cosine", "--warmup-steps", "99999"], "--warmup-steps 99999 must"),
        (["--warmup-steps", "5"], "--warmup-steps is only used by schedule 'warmup_cosine'"),
        (["--clip-norm", "0"], "--clip-norm must be > 0"),
        (["--l2", "-1"], "--l2 must be >= 0"),
        (["--weight-decay", "nan"], "--weight-decay must be >= 0"),
        (["--regularize", "biases"], "--regularize must be one of kernels, all"),
        (["--monitor", "val_mse"], "monitor 'val_mse' is not reported for classify models"),
        (["search"], "search needs --space"),
        (["search", "--space", "lr=uniform(1,0)"], "0 < low < high"),
        (["search", "--space", "depth=1,2"], "unknown parameter 'depth'"),
        (["search", "--space", "lr=uniform(0.1,1)"], "learning_rate is a range"),
        (["search", "--space", "lr=0.1", "--method", "random"], "trials must be >= 1"),
    ],
)
def test_bad_training_flags_name_the_flag(tmp_path, capsys, args, message):
    assert _main(*args, "--out", str(tmp_path)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "metrics.json").exists()


def test_quiet_prints_only_the_result_and_flags_reach_the_config(tmp_path):
    result = run_cli(
        "--quiet",
        "--epochs",
        "2",
        "--batch-size",
        "128",
        "--optimizer",
        "sgd",
        "--nesterov",
        "--schedule",
        "cosine",
        "--clip-norm",
        "1.0",
        "--l2",
        "1e-4",
        "--weight-decay",
        "1e-4",
        "--augment",
        "shift,noise",
        "--patience",
        "3",
        "--min-delta",
        "0.001",
        "--monitor",
        "val_loss",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("test | ") and "epoch" not in result.stdout
    assert result.stderr == ""  # no progress bar when not on a terminal
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert config["nesterov"] is True and config["schedule"] == "cosine"
    assert config["augment"] == ["shift", "noise"] and config["monitor"] == "val_loss"
    assert (config["clip_norm"], config["l2"], config["weight_decay"]) == (1.0, 1e-4, 1e-4)


def test_search_over_a_2x2_grid_runs_4_trials_and_ranks_them(tmp_path):
    pytest.importorskip("statsmodels")
    result = run_cli(
        "search", "--model", "forecast", "--epochs", "1", "--space", "lr=1e-4,3e-3",
        "--space", "batch-size=16,32", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "search.json").read_text())
    values = [trial["value"] for trial in summary["trials"]]
    assert len(values) == 4 and values == sorted(values)  # val_loss: lower first
    points = {(t["params"]["learning_rate"], t["params"]["batch_size"]) for t in summary["trials"]}
    assert points == {(1e-4, 16), (1e-4, 32), (3e-3, 16), (3e-3, 32)}
    table = result.stdout[result.stdout.index("rank") :].splitlines()
    assert len(table) == 6 and table[-1] == f"wrote {tmp_path}/search.json"


def test_debug_nans_turns_on_jax_debug_nans(tmp_path, capsys):
    import jax

    try:
        assert _main("--debug-nans", "--epochs", "0", "--out", str(tmp_path)) == 2
        assert jax.config.jax_debug_nans
    finally:
        jax.config.update("jax_debug_nans", False)


def test_resume_from_a_directory_without_checkpoints_names_it_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "never-ran"
    assert _main("--resume", str(missing)) == 2
    error = capsys.readouterr().err
    assert f"no readable checkpoint in {missing}/checkpoints" in error
    assert not missing.exists()


@pytest.mark.parametrize("name", __import__("zoo").models.names())
def test_show_config_prints_the_preset_with_the_flags_on_top(name, capsys):
    from zoo.training.config import PRESETS

    assert _main("--model", name, "--epochs", "3", "--show-config") == 0
    shown = json.loads(capsys.readouterr().out)
    preset = dict(PRESETS.get(name, {}))
    options = preset.pop("model_options", {})
    expected = {**preset, "model": name, "epochs": 3}
    assert {key: shown[key] for key in expected} == json.loads(json.dumps(expected))
    assert shown["model_options"] == json.loads(json.dumps(options))


def test_show_config_refuses_an_option_the_model_lacks(capsys):
    assert _main("--model", "lstm", "--model-option", "channels=3", "--show-config") == 2
    assert "'lstm' has no option channels" in capsys.readouterr().err


def test_help_groups_every_flag_with_its_default_and_lists_the_commands(capsys):
    from zoo.training.config import TrainConfig

    assert _main("--help") == 0
    text = capsys.readouterr().out
    titles = ["model and data", "optimisation", "regularisation and early stopping"]
    titles += ["runs and checkpoints", "devices and hosts", "output"]
    assert [t for t in titles if f"\n{t}:\n" in text] == titles
    for command in ("search", "predict", "evaluate", "export"):
        assert f"train.py {command}" in text
        assert _main(command, "--help") == 0
        capsys.readouterr()
    # Each config flag says its default: the field's, or the preset's where presets set it.
    for _, flag, _ in train_module()._CONFIG_FLAGS:
        entry = text[text.index(f"  {flag} ") :].split("\n  --")[0]
        assert "default" in entry, (flag, entry)
    flat = " ".join(text.split())
    assert TrainConfig.__dataclass_fields__["learning_rate"].default == 0.001
    assert "(peak) learning rate (default: the model's preset, else 0.001)" in flat


def _evaluation_config(*args: str):
    """The config `train.py evaluate --run RUN ARGS` reads its data with, for a forecaster
    trained on a CSV whose column it picked itself."""
    from zoo.trained import Trained
    from zoo.training import TrainConfig

    train = train_module()
    config = TrainConfig.for_model(
        "forecast", dataset="csv", data_path="a.csv", time_column="day", missing="ffill"
    )
    described = {"stats": {"mean": 0, "std": 1, "column": "v"}}
    run = Trained(model=None, variables={}, config=config, dataset=described, step=0, which="best")
    parsed = train.parse_use_args(["evaluate", "--run", "R", *args])
    return run.data_config(parsed.dataset, parsed.data_path, **train._data_flags(parsed))


def test_evaluate_reads_new_data_with_the_runs_options_and_flags_on_top():
    other = _evaluation_config("--data-path", "b.csv")
    assert (other.data_path, other.column, other.time_column, other.missing) == (
        "b.csv", "v", "day", "ffill"
    )  # fmt: skip
    flags = _evaluation_config("--data-path", "b.csv", "--column", "w", "--missing", "drop")
    assert (flags.column, flags.time_column, flags.missing) == ("w", "day", "drop")
    own = _evaluation_config("--missing", "interpolate")  # the run's file, read otherwise
    assert (own.data_path, own.column, own.missing) == ("a.csv", "v", "interpolate")
    sunspots = _evaluation_config("--dataset", "series")  # another kind: none of the CSV's
    assert sunspots.data_options() == {} and sunspots.data_path is None
    image_flags = train_module().parse_use_args(
        ["evaluate", "--run", "R", "--image-size", "28x28", "--channels", "1", "--skip-bad-files"]
    )
    assert (image_flags.image_size, image_flags.channels, image_flags.skip_bad_files) == (
        (28, 28), 1, True
    )  # fmt: skip
