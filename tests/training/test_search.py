import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from zoo.training import ConfigError, TrainConfig
from zoo.training.search import (
    Choice,
    Range,
    format_table,
    grid,
    parse_space,
    parse_space_args,
    run_search,
    sample,
    summarize,
    trial_config,
)
from zoo.training.workdir import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_parse_space_args_reads_lists_ranges_and_tuples():
    space = parse_space_args(
        [
            "learning_rate=1e-3,3e-3",
            "optimizer=adam,sgd",
            "model.hidden_sizes=(64,),(32,32)",
            "model.dropout=uniform(0, 0.5)",
            "batch_size=logint(16,128)",
        ]
    )
    assert space["learning_rate"] == Choice((1e-3, 3e-3))
    assert space["optimizer"] == Choice(("adam", "sgd"))
    assert space["model.hidden_sizes"] == Choice(((64,), (32, 32)))
    assert space["model.dropout"] == Range(0, 0.5)
    assert space["batch_size"] == Range(16, 128, log=True, integer=True)


@pytest.mark.parametrize(
    "items, match",
    [
        ({"lr": [1e-3]}, "unknown parameter 'lr'"),
        ({"learning_rate": []}, "non-empty list"),
        ({"learning_rate": {"loguniform": [0, 1]}}, "0 < low < high"),
        ({"learning_rate": {"normal": [0, 1]}}, "unknown range 'normal'"),
        ({"learning_rate": {"uniform": [1]}}, "two numbers"),
        ({}, "empty"),
    ],
)
def test_bad_spaces_are_named(items, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(items)


def test_grid_is_every_combination_and_refuses_ranges():
    space = parse_space({"learning_rate": [0.1, 0.2], "batch_size": [8, 16, 32]})
    points = grid(space)
    assert len(points) == 6 and {"learning_rate": 0.2, "batch_size": 32} in points
    with pytest.raises(ConfigError, match="learning_rate is a range"):
        grid(parse_space({"learning_rate": {"uniform": [0.1, 0.2]}}))


def test_random_samples_are_seeded_and_inside_their_ranges():
    space = parse_space(
        {
            "learning_rate": {"loguniform": [1e-4, 1e-1]},
            "batch_size": {"int": [8, 12]},
            "optimizer": ["adam", "sgd"],
        }
    )
    draws = [sample(space, np.random.default_rng(0)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(1)
    points = [sample(space, rng) for _ in range(400)]
    rates = np.array([p["learning_rate"] for p in points])
    assert rates.min() >= 1e-4 and rates.max() <= 1e-1
    assert 0.2 < np.mean(rates < 1e-3) < 0.47  # log-uniform: a third below 1e-3
    assert {p["batch_size"] for p in points} == {8, 9, 10, 11, 12}
    assert {p["optimizer"] for p in points} == {"adam", "sgd"}


def test_trial_config_sets_fields_and_model_options():
    base = TrainConfig(model="lstm", dataset="digits-seq", model_options={"dropout": 0.1})
    config = trial_config(base, {"learning_rate": 0.01, "model.hidden_sizes": (8,)})
    assert config.learning_rate == 0.01
    assert dict(config.model_options) == {"dropout": 0.1, "hidden_sizes": (8,)}
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        trial_config(base, {"epochs": 0})


def test_grid_search_runs_every_trial_and_ranks_by_validation_loss(tmp_path):
    pytest.importorskip("statsmodels")
    base = TrainConfig.for_model("forecast", epochs=2)
    space = parse_space({"learning_rate": [1e-4, 3e-3], "batch_size": [16, 32]})
    summary = run_search(base, space, str(tmp_path), method="grid", log=lambda _: None)
    written = json.loads((tmp_path / "search.json").read_text())
    assert written == json.loads(json.dumps(summary))
    trials = written["trials"]
    assert len(trials) == 4 and {t["trial"] for t in trials} == {0, 1, 2, 3}
    assert written["monitor"] == "val_loss" and not written["higher_is_better"]
    values = [t["value"] for t in trials]
    assert values == sorted(values) and written["best"] == trials[0]
    for trial in trials:  # each value is what that trial's own run reported
        metrics = json.loads(
            (tmp_path / f"trial_{trial['trial']:03d}" / "metrics.json").read_text()
        )
        assert trial["value"] == metrics["history"][-1]["val_loss"]
        assert metrics["config"]["learning_rate"] == trial["params"]["learning_rate"]
    table = format_table(written).splitlines()
    assert len(table) == 5 and table[0].split()[:4] == [
        "rank",
        "trial",
        "learning_rate",
        "batch_size",
    ]


def test_a_finished_search_is_kept_unless_overwritten(tmp_path):
    pytest.importorskip("statsmodels")
    base = TrainConfig.for_model("forecast", epochs=1)
    space = parse_space({"learning_rate": [1e-3, 3e-3]})
    first = run_search(base, space, str(tmp_path), log=lambda _: None)
    with pytest.raises(WorkdirError, match="holds a finished search .*--overwrite"):
        run_search(base, space, str(tmp_path), log=lambda _: None)
    assert json.loads((tmp_path / "search.json").read_text()) == json.loads(json.dumps(first))
    again = run_search(base, space, str(tmp_path), log=lambda _: None, overwrite=True)
    assert [t["value"] for t in again["trials"]] == [t["value"] for t in first["trials"]]


def test_tpe_search_with_optuna(tmp_path):
    pytest.importorskip("optuna")
    pytest.importorskip("statsmodels")
    base = TrainConfig.for_model("forecast", epochs=1)
    space = parse_space({"learning_rate": {"loguniform": [1e-4, 1e-2]}, "batch_size": [16, 32]})
    summary = run_search(base, space, str(tmp_path), method="tpe", trials=3, log=lambda _: None)
    assert len(summary["trials"]) == 3
    for trial in summary["trials"]:
        assert 1e-4 <= trial["params"]["learning_rate"] <= 1e-2
        assert trial["params"]["batch_size"] in (16, 32)


def test_random_search_records_rejected_points_and_goes_on(tmp_path):
    pytest.importorskip("statsmodels")
    base = TrainConfig.for_model("forecast", epochs=1)
    space = parse_space({"batch_size": [16, 100000]})
    summary = run_search(base, space, str(tmp_path), method="random", trials=4, log=lambda _: None)
    failed = [t for t in summary["trials"] if "error" in t]
    done = [t for t in summary["trials"] if "value" in t]
    assert failed and done and len(failed) + len(done) == 4
    assert "batch_size 100000 is larger than" in failed[0]["error"]


def test_accuracy_ranks_higher_first_and_failed_trials_last():
    results = [
        {"trial": 0, "params": {}, "monitor": "val_accuracy", "value": 0.5},
        {"trial": 1, "params": {}, "error": "batch_size too large"},
        {"trial": 2, "params": {}, "monitor": "val_accuracy", "value": 0.9},
    ]
    summary = summarize("grid", parse_space({"seed": [0, 1, 2]}), results)
    assert [t["trial"] for t in summary["trials"]] == [2, 0, 1]
    assert summary["best"]["trial"] == 2 and summary["higher_is_better"]


def _postgres_programs() -> tuple[str, str]:
    """`initdb` and `pg_ctl` from PATH, or from the newest /usr/lib/postgresql/*/bin (Debian
    and Ubuntu keep them there, off PATH)."""
    for bin_dir in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb, pg_ctl = (shutil.which(name, path=bin_dir) for name in ("initdb", "pg_ctl"))
        if initdb and pg_ctl:
            return initdb, pg_ctl
    pytest.skip("PostgreSQL's initdb and pg_ctl are neither on PATH nor in /usr/lib/postgresql")


def _server_user() -> list[str]:
    """The command prefix that runs the server: none, or as root (which initdb refuses)
    `runuser -u postgres --`."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    known = {entry.pw_name for entry in pwd.getpwall()}
    user = next((name for name in ("postgres", "nobody") if name in known), None)
    if not runuser or not user:
        pytest.skip("initdb refuses to run as root, and there is no runuser or no user to run as")
    return [runuser, "-u", user, "--"]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@pytest.fixture
def postgres_url():
    """A database on a throwaway PostgreSQL server that listens on a unix socket only,
    stopped (and its files removed) whatever the test does."""
    psycopg2 = pytest.importorskip("psycopg2")
    initdb, pg_ctl = _postgres_programs()
    as_user = _server_user()
    # Not under tmp_path: a socket path has at most 107 characters, and pytest's base
    # directory is private to this user while the server may run as another.
    home = tempfile.mkdtemp(prefix="zoo-pg-")
    data, port = os.path.join(home, "data"), "5432"  # socket only: no port is taken
    if as_user:
        shutil.chown(home, user=as_user[2])

    def server(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=60)

    try:
        made = server(initdb, "-D", data, "-U", "zoo", "--auth=trust", "--no-sync")
        assert made.returncode == 0, made.stderr
        options = f"-p {port} -k {home} -c listen_addresses='' -c fsync=off"
        log = os.path.join(home, "server.log")
        started = server(pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "start")
        assert started.returncode == 0, started.stderr + _read(log)
        connection = psycopg2.connect(host=home, port=port, user="zoo", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
        connection.cursor().execute("CREATE DATABASE study")
        connection.close()
        yield f"postgresql+psycopg2://zoo@/study?host={home}&port={port}"
    finally:
        server(pg_ctl, "-D", data, "stop", "-m", "immediate")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.slow
def test_two_processes_share_one_study_and_run_each_grid_point_once(storage, tmp_path):
    """Issue 22: two `train.py search` processes on one study (a SQLite file, a PostgreSQL
    database) run a 2x2 grid together."""
    pytest.importorskip("optuna")
    pytest.importorskip("statsmodels")
    command = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "search",
        "--model", "forecast", "--epochs", "1", "--quiet",
        "--space", "lr=1e-3,3e-3", "--space", "batch_size=16,32",
        "--storage", storage, "--study", "grid",
        "--out", str(tmp_path / "search"),
    ]  # fmt: skip
    workers = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors
    trials = json.loads((tmp_path / "search" / "search.json").read_text())["trials"]
    points = sorted((t["params"]["learning_rate"], t["params"]["batch_size"]) for t in trials)
    assert points == [(1e-3, 16), (1e-3, 32), (3e-3, 16), (3e-3, 32)]  # each once
    assert sorted(t["trial"] for t in trials) == [0, 1, 2, 3]
    for trial in trials:  # each in its own directory, its value that run's
        metrics = json.loads(
            (tmp_path / "search" / f"trial_{trial['trial']:03d}" / "metrics.json").read_text()
        )
        assert metrics["monitor_value"] == trial["value"]
    # Another search under the same study name is refused, naming what differs.
    other = [*command[:-2], "--out", str(tmp_path / "other")]
    other[other.index("lr=1e-3,3e-3")] = "lr=1e-2,3e-3"
    refused = subprocess.run(other, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "belongs to another search (space differ)" in refused.stderr


def test_a_shared_search_needs_storage_and_study(tmp_path):
    base = TrainConfig(model="cnn")
    space = parse_space({"learning_rate": [1e-3]})
    with pytest.raises(ConfigError, match="needs both storage and study"):
        run_search(base, space, str(tmp_path), storage="sqlite:///x.db", log=lambda _: None)
