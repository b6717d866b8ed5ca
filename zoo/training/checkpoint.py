"""Checkpoints with orbax: atomic, complete, checked against zoo's own record before loading.

A checkpoint is one orbax step directory `DIR/checkpoints/<step>/` holding two items, committed
together (orbax writes into a temporary directory and renames it when every item is written):

- `state`: params, optimizer state, batch-norm statistics, the step, the raw PRNG key data and,
  with early stopping, the best epoch's params and batch statistics;
- `meta` (JSON): the config, the epoch history, the early-stopping counters, zoo's own list of
  every state leaf's path, shape and dtype, and the jax/flax/optax/orbax versions and device count.

The data order is a pure function of (seed, epoch) and dropout/augmentation keys of (key, step),
so the step alone says where the data iterator and the random streams stand.

Restoring compares the new run's state, leaf by leaf, with the recorded shapes and dtypes before
orbax reads anything, since orbax would silently cast a dtype.
"""

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import chex
import jax
import numpy as np

from zoo.training.config import MONITORS, ConfigError
from zoo.training.workdir import WorkdirError, finished_run

CHECKPOINTS = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path."""


class _Unreadable(CheckpointError):
    """One checkpoint cannot be read (an older one may be)."""


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def versions() -> dict[str, Any]:
    import flax
    import optax

    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": _ocp().__version__,
        "device_count": jax.device_count(),
    }


def describe_leaves(tree: Any) -> dict[str, list]:
    """`{path: [shape, dtype]}` for every leaf of `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): [
            list(np.shape(leaf)),
            str(np.asarray(leaf).dtype) if not hasattr(leaf, "dtype") else str(leaf.dtype),
        ]
        for path, leaf in leaves
    }


def digests(tree: Any) -> dict[str, str]:
    """`{path: sha256 of the leaf's bytes}`: a restored checkpoint must match it bit for bit."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return {
        jax.tree_util.keystr(path): hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest()
        for path, leaf in leaves
    }


def check_compatible(recorded: dict[str, list], current: dict[str, list], path: str) -> None:
    """Raises `ConfigError` listing every leaf whose shape or dtype differs, or that only one
    side has."""
    problems = []
    for name in sorted(set(recorded) | set(current)):
        if name not in current:
            problems.append(f"{name}: in the checkpoint, not in this model")
        elif name not in recorded:
            problems.append(f"{name}: in this model, not in the checkpoint")
        elif recorded[name] != current[name]:
            (shape, dtype), (new_shape, new_dtype) = recorded[name], current[name]
            problems.append(
                f"{name}: checkpoint has {tuple(shape)} {dtype}, this run expects "
                f"{tuple(new_shape)} {new_dtype}"
            )
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise ConfigError(
            f"checkpoint {path} does not fit this model/config ({len(problems)} leaves differ): "
            f"{shown}"
        )


class Checkpointer:
    """Saves and restores a run's checkpoints in `workdir/checkpoints`.

    Keeps the latest `keep` checkpoints and, when `monitor` is given, also the one with the best
    value of that metric (saved with the epoch-end checkpoints); the best is kept in addition to,
    never instead of, the latest ones that resuming needs.
    """

    def __init__(self, workdir: str, *, keep: int = 2, monitor: str | None = None):
        ocp = _ocp()
        from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
        keep_policies = [policies.LatestN(n=keep)]
        if monitor is not None:
            keep_policies.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[monitor],
                    reverse=not MONITORS[monitor],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            cleanup_tmp_directories=True,  # leftovers of a save that was killed
            enable_async_checkpointing=False,  # each save is complete when save() returns
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        meta: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Writes checkpoint `step`; any failure is fatal and names the directory."""
        chex.assert_tree_all_finite(state)
        ocp = _ocp()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(
                        {**meta, "leaves": describe_leaves(state), "digests": digests(state)}
                    ),
                ),
                metrics=metrics,
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as error:  # orbax raises ValueError, OSError, ... on write errors
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory}: {error}"
            ) from error

    def read_meta(self, step: int) -> dict[str, Any]:
        ocp = _ocp()
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_latest(
        self, like: Any, warn: Callable[[str], None]
    ) -> tuple[Any, dict[str, Any]] | None:
        """The newest readable checkpoint as `(state, meta)`, restored into the structure of
        `like`; None when there is none. A checkpoint that cannot be read is reported through
        `warn`, moved aside to `unreadable_checkpoints/` (kept, never deleted) once an older one
        restores, and the previous one is tried; a shape/dtype mismatch is an error at once."""
        steps = self.steps()
        unreadable = []
        for step in reversed(steps):
            try:
                restored = self.restore(step, like)
            except _Unreadable as error:
                warn(f"{error}; trying the previous one")
                unreadable.append(os.path.join(self.directory, str(step)))
                continue
            self._set_aside(unreadable, warn)
            return restored
        if steps:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} (tried steps {steps}); refusing to "
                "start over from random weights"
            )
        return None

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Checkpoint `step` as `(state, meta)`, restored into the structure of `like`.

        Raises:
          ConfigError: when its leaves' shapes or dtypes differ from `like`'s (listing them).
          CheckpointError: when it cannot be read, or its arrays differ from their digests.
        """
        path = os.path.join(self.directory, str(step))
        refuse_pickles(path)
        try:
            meta = self.read_meta(step)
        except Exception as error:
            raise _Unreadable(f"checkpoint {path} is unreadable ({_short(error)})") from error
        check_compatible(meta.get("leaves", {}), describe_leaves(like), path)
        ocp = _ocp()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
            state = restored["state"]
            if digests(state) != meta["digests"]:
                raise ValueError("its arrays differ from the digests recorded when saving")
        except Exception as error:
            raise _Unreadable(f"checkpoint {path} is unreadable ({_short(error)})") from error
        return state, meta

    def _set_aside(self, paths: list[str], warn: Callable[[str], None]) -> None:
        """Moves unreadable checkpoints out of the way of new saves of the same steps."""
        if not paths:
            return
        sync_processes("zoo: every process has read its checkpoint")
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), "unreadable_checkpoints")
            os.makedirs(aside, exist_ok=True)
            for path in paths:
                target = os.path.join(aside, f"{os.path.basename(path)}-{int(time.time())}")
                os.replace(path, target)
                warn(f"moved unreadable checkpoint {path} to {target}")
        sync_processes("zoo: unreadable checkpoints moved aside")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib")


def refuse_pickles(directory: str) -> None:
    """zoo never unpickles: a pickle-like file inside a checkpoint means it was tampered with."""
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(PICKLE_SUFFIXES):
                raise CheckpointError(
                    f"refusing {os.path.join(root, name)}: zoo checkpoints never hold pickles, "
                    "and zoo never loads them"
                )


def open_checkpoints(
    workdir: str,
    config: Any,
    monitor: str | None,
    resume: bool,
    log: Callable[[str], None],
    overwrite: bool = False,
) -> tuple[Checkpointer, bool]:
    """The run's Checkpointer, and whether to resume from it.

    Without `resume`: an unfinished run with the same config is resumed (running the same
    command again continues it), one with another config is refused (so nothing is lost to a
    mistyped flag), and so is a finished run (its `metrics.json` and checkpoints) unless
    `overwrite`. A run whose last checkpoint is final but whose results were never written
    (killed while evaluating) is resumed to write them.
    """

    def create() -> Checkpointer:
        return Checkpointer(workdir, keep=config.keep_checkpoints, monitor=monitor)

    results = finished_run(workdir)
    if results and not resume and not overwrite:
        # Refused before orbax opens the directory: a manager closed at once can leave a
        # metadata write behind that raises in its thread as the process exits.
        steps = _step_directories(workdir)
        saved = f", checkpoints up to step {steps[-1]}" if steps else ""
        raise WorkdirError(
            f"{os.path.abspath(workdir)} holds a finished run ({os.path.basename(results)}"
            f"{saved}); pass --overwrite to replace it, or choose another --out"
        )
    checkpoints = create()
    steps = checkpoints.steps()
    if resume or not steps:
        return checkpoints, resume
    try:
        meta = checkpoints.read_meta(steps[-1])
    except Exception:  # unreadable: let the resume path fall back or fail loudly
        meta = {"finished": False, "config": None}
    saved = meta.get("config")
    current = json.loads(json.dumps(config.to_dict()))
    if not overwrite:
        state = "a finished" if meta.get("finished") else "an unfinished"
        if saved is None or saved == current:
            log(f"resuming {state} run in {workdir} (latest checkpoint: step {steps[-1]})")
            return checkpoints, True
        checkpoints.close()
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ConfigError(
            f"{checkpoints.directory} holds {state} run (latest checkpoint: step "
            f"{steps[-1]}) with another config ({', '.join(changed)} differ); pass --resume to "
            "continue it, --overwrite to start over, or choose another --out"
        )
    checkpoints.close()
    log(f"replacing the run in {workdir} (--overwrite)")
    if jax.process_index() == 0:
        shutil.rmtree(checkpoints.directory)
        if results:
            os.remove(results)
    sync_processes("zoo: replaced run's checkpoints removed")
    return create(), False


def _step_directories(workdir: str) -> list[int]:
    """The steps of the checkpoint directories in `workdir`, read from their names alone."""
    directory = os.path.join(workdir, CHECKPOINTS)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(name) for name in names if name.isdigit())


def saved_config(workdir: str) -> dict[str, Any] | None:
    """The config of the newest checkpoint in `workdir` whose metadata reads, or None."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        return None  # reading must not create the directory
    checkpoints = Checkpointer(workdir)
    try:
        for step in reversed(checkpoints.steps()):
            try:
                return checkpoints.read_meta(step)["config"]
            except Exception:
                continue
        return None
    finally:
        checkpoints.close()


class TerminationGuard:
    """Turns SIGTERM into a flag that the loop reads after each step: the step finishes, the run
    saves a checkpoint and stops. Only the main thread can install signal handlers; elsewhere
    the guard does nothing.

    In a multi-process run every process must save at the same step, so the guard leaves SIGTERM
    to JAX's preemption service, which agrees on that step across processes
    (`multihost_utils.reached_preemption_sync_point`).
    """

    def __init__(self):
        self.terminated = False
        self.stop_at_step: int | None = None
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self.terminated = True

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after `step` (a host-side check; no device sync)."""
        if step == self.stop_at_step:
            return True
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.terminated

    def __enter__(self) -> "TerminationGuard":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def sync_processes(name: str) -> None:
    """Waits until every process of a multi-process run gets here; nothing in a single one."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]
