import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import data, models
from zoo.training import ConfigError, TrainConfig, create_train_state, train_step
from zoo.training.checkpoint import (
    Checkpointer,
    CheckpointError,
    check_compatible,
    describe_leaves,
    refuse_pickles,
)

pytest.importorskip("orbax.checkpoint")


def _tree(value=1.0):
    return {
        "dense": {"kernel": jnp.full((2, 3), value), "bias": jnp.zeros(3)},
        "step": jnp.int32(7),
    }


def test_a_dtype_or_shape_change_names_the_leaf():
    recorded = describe_leaves(_tree())
    as_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.ndim == 2 else x, _tree())
    with pytest.raises(ConfigError, match=r"\['dense'\]\['kernel'\]: checkpoint has \(2, 3\) "
                       r"float32, this run expects \(2, 3\) bfloat16"):  # fmt: skip
        check_compatible(recorded, describe_leaves(as_bf16), "ckpt/5")
    wider = {**_tree(), "dense": {"kernel": jnp.ones((2, 4)), "bias": jnp.zeros(3)}}
    with pytest.raises(ConfigError, match=r"\(2, 3\) float32, this run expects \(2, 4\)"):
        check_compatible(recorded, describe_leaves(wider), "ckpt/5")
    check_compatible(recorded, describe_leaves(_tree(2.0)), "ckpt/5")  # values may differ


def test_keeps_the_latest_and_the_best_and_restores_exactly(tmp_path):
    checkpoints = Checkpointer(str(tmp_path), keep=1, monitor="val_accuracy")
    meta = {"config": {}}
    checkpoints.save(1, _tree(1.0), meta, {"val_accuracy": 0.9})
    checkpoints.save(2, _tree(2.0), meta, {"val_accuracy": 0.5})
    checkpoints.save(3, _tree(3.0), meta)  # mid-epoch: no metrics
    checkpoints.save(4, _tree(4.0), meta, {"val_accuracy": 0.6})
    assert checkpoints.steps() == [1, 4]  # the best (step 1) besides the latest
    state, restored_meta = checkpoints.restore_latest(_tree(0.0), warn=print)
    np.testing.assert_array_equal(state["dense"]["kernel"], np.full((2, 3), 4.0))
    assert restored_meta["config"] == {} and restored_meta["leaves"] == describe_leaves(_tree())
    checkpoints.close()


def test_non_finite_states_are_never_saved(tmp_path):
    checkpoints = Checkpointer(str(tmp_path))
    with pytest.raises(AssertionError):
        checkpoints.save(1, _tree(float("nan")), {})
    assert checkpoints.steps() == []
    checkpoints.close()


def test_pickle_files_are_refused(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="refusing .*model.pkl"):
        refuse_pickles(str(tmp_path))


def test_a_non_finite_batch_is_skipped_and_counted():
    pytest.importorskip("sklearn")
    digits = data.load_digits(seed=0)
    state = create_train_state(
        models.create("cnn"), TrainConfig(max_bad_steps=2), digits.train.x[:1]
    )
    good = next(data.batches(digits.train, 8))
    x = np.array(good.x)
    x[0, 0, 0, 0] = np.nan
    bad = good._replace(x=x)
    before = jax.tree.map(np.array, state.params)
    state, metrics = train_step(state, bad)
    assert int(state.step) == 1 and int(state.skipped_steps) == 1 and int(state.bad_streak) == 1
    assert float(metrics["count"]) == 0
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, state.params))
    state, _ = train_step(state, good)  # a good step resets the streak
    assert int(state.bad_streak) == 0 and int(state.skipped_steps) == 1
    for _ in range(2):
        state, _ = train_step(state, bad)
    frozen = jax.tree.map(np.array, state.params)
    state, _ = train_step(state, good)  # after max_bad_steps in a row, nothing changes
    assert int(state.bad_streak) == 3
    jax.tree.map(np.testing.assert_array_equal, frozen, jax.tree.map(np.array, state.params))


def test_a_finished_run_is_refused_before_its_checkpoints_are_opened(tmp_path, monkeypatch):
    """Opening orbax's manager only to refuse left a metadata write that raised in its thread
    as train.py exited, a traceback after the one-line refusal."""
    from zoo.training import checkpoint
    from zoo.training.workdir import RESULTS, WorkdirError

    (tmp_path / RESULTS).write_text("{}")
    for step in ("3", "12", "12.orbax-checkpoint-tmp-1"):
        (tmp_path / checkpoint.CHECKPOINTS / step).mkdir(parents=True)
    monkeypatch.setattr(checkpoint, "Checkpointer", lambda *a, **k: pytest.fail("opened"))
    config = TrainConfig(model="cnn")
    with pytest.raises(WorkdirError, match=r"run \(metrics.json, checkpoints up to step 12\)"):
        checkpoint.open_checkpoints(str(tmp_path), config, None, False, print)
