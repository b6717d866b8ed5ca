"""Long runs that lose nothing: the faults of issue 6, each with real `train.py` processes.

A small run (`cnn`, 2 epochs of 9 steps) is killed, terminated, starved of disk, corrupted or fed
bad files; it must resume bit-identically (same CPU, versions and device count), fail loudly
naming the path, or refuse.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("sklearn")
ocp = pytest.importorskip("orbax.checkpoint")

SMALL = ["--epochs", "2", "--batch-size", "128"]  # 9 steps per epoch, 18 in all
PREEMPTED = 143


def command(*args):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--quiet", *args]


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args), capture_output=True, text=True, cwd=ROOT, timeout=300, **kwargs
    )


def checkpoint_steps(out) -> list[int]:
    directory = os.path.join(out, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def final_state(out):
    """The latest checkpoint's arrays, read back with orbax."""
    manager = ocp.CheckpointManager(os.path.join(out, "checkpoints"), item_names=("state", "meta"))
    try:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return step, jax.tree.map(np.asarray, restored["state"])


def assert_bit_identical(out_a, out_b):
    step_a, state_a = final_state(out_a)
    step_b, state_b = final_state(out_b)
    assert step_a == step_b
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per model, made on first use."""
    made = {}

    def get(name, *args):
        if name not in made:
            out = str(tmp_path_factory.mktemp(f"reference-{name}"))
            result = run(*args, "--out", out)
            assert result.returncode == 0, result.stderr
            made[name] = out
        return made[name]

    return get


MODELS = {
    "cnn": ["--model", "cnn", *SMALL],
    "cnn-dropout": [
        "--model", "convnet", "--model-option", "dropout=0.3", "--model-option", "features=(8,16)",
        *SMALL,
    ],
    "lstm": ["--model", "lstm", "--model-option", "hidden_sizes=(32,32)", *SMALL],
}  # fmt: skip


@pytest.mark.parametrize("name", ["cnn-dropout", "lstm"])
def test_same_seed_twice_and_stop_then_resume_are_bit_identical(tmp_path, reference, name):
    """Fault 3: stop at step 5 (not an epoch boundary: 9 steps per epoch), then resume."""
    args = MODELS[name]
    again = str(tmp_path / "again")
    assert run(*args, "--out", again).returncode == 0
    assert_bit_identical(reference(name, *args), again)

    split = str(tmp_path / "split")
    stopped = run(*args, "--stop-after-steps", "5", "--out", split)
    assert stopped.returncode == PREEMPTED, stopped.stderr
    assert checkpoint_steps(split) == [5]
    # --resume for one; the other runs the same command again, which resumes an unfinished run
    again_args = ("--resume", split) if name == "cnn-dropout" else (*args, "--out", split)
    resumed = run(*again_args)
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(reference(name, *args), split)
    if name == "lstm":
        kept = run(*args, "--lr", "0.01", "--stop-after-steps", "1", "--out", split)
        assert kept.returncode == 2 and "holds a finished run" in kept.stderr
        assert "--overwrite" in kept.stderr and len(kept.stderr.strip().splitlines()) == 1
        assert_bit_identical(reference(name, *args), split)  # the trained model is still there
        replaced = run(
            *args, "--lr", "0.01", "--stop-after-steps", "1", "--overwrite", "--out", split
        )
        assert replaced.returncode == PREEMPTED, replaced.stderr
        assert checkpoint_steps(split) == [1] and not os.path.exists(f"{split}/metrics.json")
        refused = run(*args, "--out", split)  # an unfinished run with another learning rate
        assert refused.returncode == 2 and "learning_rate differ" in refused.stderr


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigkill_during_checkpoint_saves_resumes_from_a_complete_one(tmp_path, reference, delay):
    """Fault 1: a checkpoint every step, so the kill lands in or near a save."""
    out = str(tmp_path / "run")
    process = subprocess.Popen(
        command(*MODELS["cnn"], "--checkpoint-every", "1", "--out", out),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(lambda: checkpoint_steps(out))
    time.sleep(delay)
    process.kill()
    process.wait()
    resumed = run("--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(reference("cnn", *MODELS["cnn"]), out)
    leftovers = [n for n in os.listdir(os.path.join(out, "checkpoints")) if "tmp" in n]
    assert not leftovers


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigterm_mid_epoch_saves_and_resume_continues_from_that_step(tmp_path, workers):
    """Fault 2 (that resuming is bit-exact is fault 3's test). SIGTERM goes to the process
    group, as a scheduler sends it: grain's data workers leave the stop to the trainer."""
    args = ["--model", "cnn", "--epochs", "6", "--batch-size", "128", "--data-workers", workers]
    out = str(tmp_path / "run")
    process = subprocess.Popen(
        command(*args, "--out", out),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    history = os.path.join(out, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(history) and os.path.getsize(history) > 0)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED, stderr
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr
    step = checkpoint_steps(out)[-1]
    assert f"after step {step}" in stderr and f"--resume {out}" in stderr
    resumed = run("--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["resumed_from_step"] == step and metrics["steps"] == 6 * 9
    assert [record["epoch"] for record in metrics["history"]] == [1, 2, 3, 4, 5, 6]


# Runs train.py with files limited to 64 KB; SIGXFSZ ignored (kept across exec), so a write past
# the limit fails with EFBIG instead of killing the process.
LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_a_write_error_is_fatal_names_the_directory_and_keeps_the_previous(tmp_path, reference):
    """Fault 4: random weights do not compress, so the 1 MB state cannot fit in 64 KB files."""
    out = str(tmp_path / "run")
    args = [*MODELS["cnn"], "--keep-checkpoints", "1"]
    assert run(*args, "--stop-after-steps", "4", "--out", out).returncode == PREEMPTED
    failed = subprocess.run(
        [sys.executable, "-c", LIMITED, *command("--resume", out)[1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert failed.returncode == 1, failed.stderr
    assert f"could not write checkpoint 9 to {out}/checkpoints" in failed.stderr
    assert checkpoint_steps(out) == [4]
    resumed = run("--resume", out)  # the previous checkpoint is intact
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(reference("cnn", *MODELS["cnn"]), out)


def _corrupt(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            if size > 64:
                with open(path, "r+b") as f:  # flip bytes in the middle, keep the size
                    f.seek(size // 2)
                    chunk = f.read(16)
                    f.seek(size // 2)
                    f.write(bytes(b ^ 0xFF for b in chunk))


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    """Fault 5."""
    out = str(tmp_path / "run")
    stopped = run(*MODELS["cnn"], "--checkpoint-every", "3", "--stop-after-steps", "6",
                  "--out", out)  # fmt: skip
    assert stopped.returncode == PREEMPTED and checkpoint_steps(out) == [3, 6]
    _corrupt(os.path.join(out, "checkpoints", "6"))
    resumed = run("--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {out}/checkpoints/6 is unreadable" in resumed.stdout + resumed.stderr
    assert_bit_identical(reference("cnn", *MODELS["cnn"]), out)


def test_no_readable_checkpoint_is_a_loud_error_not_a_fresh_start(tmp_path):
    """Fault 5, with nothing to fall back to."""
    out = str(tmp_path / "run")
    assert run(*MODELS["cnn"], "--stop-after-steps", "4", "--out", out).returncode == PREEMPTED
    _corrupt(os.path.join(out, "checkpoints", "4"))
    resumed = run("--resume", out)
    assert resumed.returncode != 0
    assert f"no readable checkpoint in {out}/checkpoints" in resumed.stderr
    assert not os.path.exists(os.path.join(out, "metrics.json"))


def test_resuming_a_different_model_names_the_mismatched_leaves(tmp_path):
    """Fault 6 (the dtype case is tests/training/test_checkpoint.py)."""
    out = str(tmp_path / "run")
    args = MODELS["cnn-dropout"]
    assert run(*args, "--stop-after-steps", "2", "--out", out).returncode == PREEMPTED
    resumed = run("--resume", out, "--model-option", "features=(8,32)")
    assert resumed.returncode == 2
    assert "does not fit this model/config" in resumed.stderr
    assert "checkpoint has (3, 3, 8, 16) float32, this run expects (3, 3, 8, 32) float32" in (
        resumed.stderr
    )
    other = run("--resume", out, "--model", "cnn")
    assert other.returncode == 2 and "in this model, not in the checkpoint" in other.stderr


def test_non_finite_steps_are_skipped_counted_and_abort_without_saving(tmp_path):
    """Fault 7: an L2 weight of 1e38 makes every loss infinite."""
    out = str(tmp_path / "run")
    result = run(*MODELS["cnn"], "--l2", "1e38", "--max-bad-steps", "3", "--out", out)
    assert result.returncode == 1
    assert "3 consecutive steps (1..3) had a non-finite loss or gradient" in result.stderr
    assert checkpoint_steps(out) == []


class _Payload:
    """Unpickling this creates the sentinel file: it must never happen."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickles_in_data_or_checkpoints_are_refused_and_never_run(tmp_path):
    """Fault 8."""
    sentinel = tmp_path / "payload-ran"
    evil = tmp_path / "mnist.npz"
    payload = np.array([_Payload(str(sentinel))], dtype=object)
    np.savez(evil, x_train=payload, y_train=payload, x_test=payload, y_test=payload)
    result = run("--dataset", "mnist", "--data-path", str(evil), "--out", str(tmp_path / "a"))
    assert result.returncode == 2 and f"{evil} holds pickled objects" in result.stderr

    out = str(tmp_path / "run")
    assert run(*MODELS["cnn"], "--stop-after-steps", "2", "--out", out).returncode == PREEMPTED
    planted = os.path.join(out, "checkpoints", "2", "state", "extra.pkl")
    with open(planted, "wb") as f:
        pickle.dump(_Payload(str(sentinel)), f)
    resumed = run("--resume", out)
    assert resumed.returncode == 1 and f"refusing {planted}" in resumed.stderr
    assert not sentinel.exists()
