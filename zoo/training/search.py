"""Hyperparameter search: grid, random, or TPE (optuna), each trial a normal training run.

A space maps config fields (or `model.KEY` for a model option) to a list of values or a range:

    {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "batch_size": [32, 64],
     "model.dropout": [0.0, 0.2]}

On the command line the same is `learning_rate=loguniform(1e-4,1e-2) batch_size=32,64`. Grid search
takes lists only; random and TPE sample ranges too. Trials are ranked by the validation metric of
the parameters each run ends with (`metrics.json`'s `monitor`), and `DIR/search.json` is rewritten
after every trial, so an interrupted search keeps what it finished.

With `storage` (an optuna RDB URL: `sqlite:///study.db` for the processes of one machine, a
PostgreSQL URL for many hosts) and a study name, the search is one optuna study that any number of
processes started with the same command share: each takes the next trial number from the study,
so grid points are split among them and none runs twice, random points are drawn from
`(seed, trial number)`, and TPE learns from every process's trials. Each trial runs in
`DIR/trial_NNN` (its number in the study); `search.json` is rewritten from the study after each.
A process whose trial is killed leaves it RUNNING in the study, and its point is not retried.
"""

import ast
import dataclasses
import itertools
import json
import math
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from zoo import models
from zoo.training.config import MONITORS, ConfigError, TrainConfig
from zoo.training.early_stopping import default_monitor
from zoo.training.loop import train_and_evaluate, write_json
from zoo.training.workdir import WorkdirError, claim

METHODS = ("grid", "random", "tpe")
MODEL_PREFIX = "model."


@dataclasses.dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False


Space = dict[str, Choice | Range]
_RANGES = {
    "uniform": {},
    "loguniform": {"log": True},
    "int": {"integer": True},
    "logint": {"integer": True, "log": True},
}


def parse_range(name: str, kind: str, bounds: Sequence[Any]) -> Range:
    if kind not in _RANGES:
        raise ConfigError(f"space {name}: unknown range {kind!r}; choose from {', '.join(_RANGES)}")
    if len(bounds) != 2 or not all(isinstance(b, int | float) for b in bounds):
        raise ConfigError(f"space {name}: {kind} takes two numbers (low, high), got {bounds}")
    low, high = bounds
    if not low < high or (_RANGES[kind].get("log") and low <= 0):
        raise ConfigError(
            f"space {name}: {kind}({low}, {high}) needs 0 < low < high for log "
            "ranges and low < high otherwise"
        )
    return Range(low, high, **_RANGES[kind])


def parse_space(items: Mapping[str, Any]) -> Space:
    """A space from a mapping such as a JSON/TOML file's: lists or `{"RANGE": [low, high]}`."""
    space: Space = {}
    for name, spec in items.items():
        _check_name(name)
        if isinstance(spec, Mapping) and len(spec) == 1:
            ((kind, bounds),) = spec.items()
            space[name] = parse_range(name, kind, bounds)
        elif isinstance(spec, list | tuple) and spec:
            space[name] = Choice(tuple(_tuples(v) for v in spec))
        else:
            raise ConfigError(
                f"space {name}: expected a non-empty list of values or "
                f"{{RANGE: [low, high]}}, got {spec!r}"
            )
    if not space:
        raise ConfigError("the search space is empty")
    return space


def parse_space_args(args: Sequence[str]) -> Space:
    """A space from `NAME=V1,V2,...` or `NAME=RANGE(low,high)` strings (values as Python
    literals, bare words as strings)."""
    items: dict[str, Any] = {}
    for arg in args:
        name, sep, text = arg.partition("=")
        if not sep or not name or not text:
            raise ConfigError(f"space expects NAME=V1,V2 or NAME=RANGE(low,high), got {arg!r}")
        match = re.fullmatch(r"(\w+)\((.*)\)", text.strip())
        if match and match[1] in _RANGES:
            items[name] = {match[1]: [_literal(v) for v in match[2].split(",")]}
        else:
            items[name] = [_literal(v) for v in _split_top_level(text)]
    return parse_space(items)


def load_space(path: str) -> Space:
    """A space from a `.json` or `.toml` file."""
    try:
        with open(path, "rb") as f:
            items = tomllib.load(f) if path.endswith(".toml") else json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read search space {path}: {error}") from error
    return parse_space(items)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets, so `hidden_sizes=(64,),(128,)` gives two tuples."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # JSON lists as model shapes


def _check_name(name: str) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "model_options"}
    if not (name in fields or (name.startswith(MODEL_PREFIX) and len(name) > len(MODEL_PREFIX))):
        raise ConfigError(
            f"space: unknown parameter {name!r}; use a config field ({', '.join(sorted(fields))}) "
            f"or model.OPTION"
        )


def grid(space: Space) -> list[dict[str, Any]]:
    """Every combination, in order."""
    ranges = [name for name, dim in space.items() if isinstance(dim, Range)]
    if ranges:
        raise ConfigError(
            f"grid search needs lists of values; {', '.join(ranges)} is a range "
            "(use --method random or tpe)"
        )
    names = list(space)
    return [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(space[n].values for n in names))
    ]


def sample(space: Space, rng: np.random.Generator) -> dict[str, Any]:
    """One random point: choices uniformly, ranges uniformly (in log space for log ranges)."""
    point = {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            point[name] = dim.values[rng.integers(len(dim.values))]
            continue
        low, high = (math.log(dim.low), math.log(dim.high)) if dim.log else (dim.low, dim.high)
        value = rng.uniform(low, high)
        value = math.exp(value) if dim.log else value
        point[name] = int(round(value)) if dim.integer else float(value)
    return point


def _suggest(trial, space: Space) -> dict[str, Any]:
    point = {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            index = trial.suggest_categorical(name, list(range(len(dim.values))))
            point[name] = dim.values[index]  # by index: optuna keeps only plain scalars
        elif dim.integer:
            point[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            point[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return point


def trial_config(base: TrainConfig, point: Mapping[str, Any]) -> TrainConfig:
    """`base` with the point's fields and model options on top (validated like any config)."""
    values = base.to_dict()
    options = dict(values["model_options"])
    for name, value in point.items():
        if name.startswith(MODEL_PREFIX):
            options[name[len(MODEL_PREFIX) :]] = value
        else:
            values[name] = value
    return TrainConfig.from_dict({**values, "model_options": options})


def run_search(
    base: TrainConfig,
    space: Space,
    workdir: str,
    *,
    method: str = "grid",
    trials: int | None = None,
    log: Callable[[str], None] = print,
    parallel: str = "sharding",
    overwrite: bool = False,
    storage: str | None = None,
    study: str | None = None,
    data_workers: int = 0,
) -> dict[str, Any]:
    """Runs the trials into `workdir/trial_NNN/` and returns what it writes to `search.json`;
    each trial is a `train_and_evaluate` run with `parallel` and `data_workers`.

    The search holds `workdir`'s lock while it runs. A `workdir` that holds a search's results
    already is refused unless `overwrite`, which then replaces each trial's run as well.

    With `storage` and `study`, the trials are those of a shared optuna study (the module
    docstring): no lock on `workdir`, whose `search.json` every process rewrites, and each
    trial's run holds its own directory.
    """
    if (storage is None) != (study is None):
        raise ConfigError("a shared search needs both storage and study (--storage, --study)")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    points = []
    if method == "grid":
        points = grid(space)
        if trials is not None:
            points = points[:trials]
        for point in points:
            trial_config(base, point)  # every grid config is valid before the first run
    elif trials is None or trials < 1:
        raise ConfigError(f"trials must be >= 1 for {method} search, got {trials}")
    run = {"parallel": parallel, "data_workers": data_workers}  # how each trial runs
    if storage is not None:
        return _run_shared(base, space, workdir, points, method, trials, log, run, storage, study)
    with claim(workdir):
        results_path = os.path.join(workdir, "search.json")
        if os.path.exists(results_path) and not overwrite:
            raise WorkdirError(
                f"{os.path.abspath(workdir)} holds a finished search (search.json); pass "
                "--overwrite to replace it, or choose another --out"
            )
        return _run_trials(base, space, workdir, points, method, trials, log, run, overwrite)


def _run_trials(base, space, workdir, points, method, trials, log, run, overwrite):
    monitor = base.monitor or default_monitor(models.task(base.model))
    study = _tpe_study(MONITORS[monitor], base.seed, trials) if method == "tpe" else None
    rng = np.random.default_rng(base.seed)
    count = len(points) if method == "grid" else trials
    results: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for number in range(count):
        optuna_trial = study.ask() if study else None
        if method == "grid":
            point = points[number]
        elif study:
            point = _suggest(optuna_trial, space)
        else:
            point = sample(space, rng)
        record = _run_trial(base, point, number, workdir, log, run, overwrite)
        results.append(record)
        if study and "value" in record:
            study.tell(optuna_trial, record["value"])
        elif study:
            study.tell(optuna_trial, state=_optuna().trial.TrialState.FAIL)
        summary = summarize(method, space, results)
        if jax.process_index() == 0:
            write_json(os.path.join(workdir, "search.json"), summary)
    return summary


def _run_trial(base, point, number, workdir, log, run, overwrite) -> dict[str, Any]:
    """Trains trial `number` at `point` into `workdir/trial_NNN`; its record for
    `search.json` (an `error` in place of metrics when the config rejects the point)."""
    trial_dir = os.path.join(workdir, f"trial_{number:03d}")
    start = time.perf_counter()
    try:
        metrics = train_and_evaluate(
            trial_config(base, point),
            trial_dir,
            log=lambda _: None,
            verbose=False,
            progress=False,
            overwrite=overwrite,
            **run,
        )
    except ConfigError as error:  # a sampled point the config rejects: record, go on
        log(f"trial {number}: {point} rejected: {error}")
        return {"trial": number, "params": point, "error": str(error)}
    record = {
        "trial": number,
        "params": point,
        "monitor": metrics["monitor"],
        "value": metrics["monitor_value"],
        **{
            k: v
            for k, v in metrics.items()
            if k.startswith("test_") and k != "test_confusion_matrix"
        },
        "epochs": metrics["epochs"],
        "seconds": time.perf_counter() - start,
        "dir": trial_dir,
    }
    log(f"trial {number}: {_format_point(point)} -> {record['monitor']} {record['value']:.4f}")
    return record


def _run_shared(base, space, workdir, points, method, trials, log, run, storage, name):
    """The trials of optuna study `name` in `storage` that this process takes, until the
    study has `trials` of them (grid: every point); returns the study's summary."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    monitor = base.monitor or default_monitor(models.task(base.model))
    count = len(points) if method == "grid" else trials
    # TPE's own random start: unseeded, so two processes do not suggest the same points.
    sampler = optuna.samplers.TPESampler(n_startup_trials=min(10, max(1, count // 3)))
    direction = "maximize" if MONITORS[monitor] else "minimize"
    study = _open_study(optuna, storage, name, direction, sampler)
    _check_same_search(study, base, space, method, count)
    while True:
        trial = study.ask()
        if trial.number >= count:  # another process took the last one
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            break
        if method == "grid":
            point = points[trial.number]
        elif method == "random":
            point = sample(space, np.random.default_rng([base.seed, trial.number]))
        else:
            point = _suggest(trial, space)
        record = _run_trial(base, point, trial.number, workdir, log, run, False)
        trial.set_user_attr("record", json.loads(json.dumps(record)))
        if "value" in record:
            study.tell(trial, record["value"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        _write_study_summary(study, method, space, workdir)
    return _write_study_summary(study, method, space, workdir)


def _write_study_summary(study, method: str, space: Space, workdir: str) -> dict[str, Any]:
    """`search.json` of every trial the study has finished, by any process; not over a file
    that another process wrote with more of them."""
    records = [t.user_attrs["record"] for t in study.get_trials() if "record" in t.user_attrs]
    summary = summarize(method, space, sorted(records, key=lambda r: r["trial"]))
    path = os.path.join(workdir, "search.json")
    try:
        with open(path) as f:
            written = len(json.load(f)["trials"])
    except (OSError, ValueError, KeyError):
        written = 0
    if len(records) >= written:
        os.makedirs(workdir, exist_ok=True)
        write_json(path, summary)
    return summary


def _open_study(optuna, storage: str, name: str, direction: str, sampler, attempts: int = 5):
    """Creates study `name` in `storage`, or loads it. Processes started together race to
    create the storage's tables (SQLite: "table trials already exists"), so a failure is
    retried: the loser finds the tables the winner made."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                storage=storage, study_name=name, direction=direction, sampler=sampler,
                load_if_exists=True,
            )  # fmt: skip
        except Exception as error:  # a bad URL, an unreachable server, another direction
            if attempt == attempts - 1:
                where = _without_password(storage)
                raise ConfigError(f"cannot open study {name!r} in {where}: {error}") from None
            time.sleep(0.2 * (attempt + 1))


def _check_same_search(study, base: TrainConfig, space: Space, method: str, count: int) -> None:
    """Records this search in a new study; refuses a study made by another search (its
    trials would be mixed with this one's), naming what differs."""
    this = json.loads(
        json.dumps(
            {
                "config": base.to_dict(),
                "space": {name: dataclasses.asdict(dim) for name, dim in space.items()},
                "method": method,
                "trials": count,
            }
        )
    )
    if "search" not in study.user_attrs:
        study.set_user_attr("search", this)
        return
    saved = study.user_attrs["search"]
    differ = sorted(key for key in this if saved.get(key) != this[key])
    if differ:
        raise ConfigError(
            f"study {study.study_name!r} belongs to another search ({', '.join(differ)} "
            "differ); give another --study"
        )


def summarize(method: str, space: Space, results: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in results if "value" in r]
    failed = [r for r in results if "value" not in r]
    higher = MONITORS[done[0]["monitor"]] if done else True
    ranked = sorted(done, key=lambda r: -r["value"] if higher else r["value"])
    return {
        "method": method,
        "space": {name: dataclasses.asdict(dim) for name, dim in space.items()},
        "monitor": done[0]["monitor"] if done else None,
        "higher_is_better": higher,
        "best": ranked[0] if ranked else None,
        "trials": ranked + failed,
    }


def format_table(summary: Mapping[str, Any]) -> str:
    """The ranked trials as a plain-text table."""
    trials = [t for t in summary["trials"] if "value" in t]
    if not trials:
        return "no trial finished"
    names = list(trials[0]["params"])
    preferred = ("test_accuracy", "test_bpc", "test_mse", "test_loss")
    test_key = next((k for k in preferred if k in trials[0]), None)
    header = ["rank", "trial", *names, summary["monitor"], *([test_key] if test_key else []), "s"]
    rows = [
        [
            str(rank),
            str(t["trial"]),
            *(_format_value(t["params"][n]) for n in names),
            f"{t['value']:.4f}",
            *([f"{t[test_key]:.4f}"] if test_key else []),
            f"{t['seconds']:.1f}",
        ]
        for rank, t in enumerate(trials, 1)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _format_point(point: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_format_value(v)}" for k, v in point.items())


def _optuna():
    try:
        import optuna
    except ImportError as error:
        raise ImportError("--method tpe needs optuna: pip install -e '.[search]'") from error
    return optuna


def _tpe_study(higher_is_better: bool, seed: int, trials: int):
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 3)))
    return optuna.create_study(
        direction="maximize" if higher_is_better else "minimize", sampler=sampler
    )


def _without_password(storage: str) -> str:
    """`storage` as it may be printed: an RDB URL's password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: it holds no password it would use
        return storage
