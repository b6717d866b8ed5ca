"""A run owns its directory: the lock, with real processes, and refusing to replace results."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from zoo.training.workdir import LOCK, WorkdirError, claim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLD = "import sys, time; from zoo.training.workdir import claim\nwith claim(sys.argv[1]):\n"


def _wait_for_holder(directory, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until `process` has written its PID into the lock file."""
    path = os.path.join(directory, LOCK)
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path):
            with open(path) as f:
                if f.read().strip() == str(process.pid):
                    return
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never took the lock"
        time.sleep(0.02)


def test_a_second_claim_names_the_directory_and_the_holders_pid(tmp_path):
    with claim(str(tmp_path), process_index=0):
        with pytest.raises(WorkdirError, match=rf"{tmp_path} is in use .*PID {os.getpid()}"):
            with claim(str(tmp_path), process_index=0):
                pass
        with claim(str(tmp_path), process_index=1):  # another process of the same run
            pass
    with claim(str(tmp_path), process_index=0):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD + "    time.sleep(600)", str(tmp_path)], cwd=ROOT
    )
    try:
        _wait_for_holder(str(tmp_path), holder)
        with pytest.raises(WorkdirError, match=f"PID {holder.pid}"):
            with claim(str(tmp_path), process_index=0):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim(str(tmp_path), process_index=0):
        pass


def _train(*args) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), "--quiet", "--model", "cnn", *args]


@pytest.mark.slow
@pytest.mark.optimized  # 12 epochs, so the first run is still training when the second starts
def test_two_train_py_runs_into_one_directory(tmp_path):
    """The second is refused at once; the first finishes with its own, unmixed files. Then a
    run killed with SIGKILL while it holds the directory does not block the next one."""
    pytest.importorskip("sklearn")
    out = str(tmp_path / "run")
    flags = ["--epochs", "12", "--batch-size", "32", "--out", out]
    first = subprocess.Popen(
        _train(*flags, "--seed", "1"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_holder(out, first)
    second = subprocess.run(
        _train(*flags, "--seed", "2"), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert first.poll() is None, "the first run ended before the second was refused"
    assert second.returncode == 2, second.stderr
    assert f"{out} is in use by another run (PID {first.pid})" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs = [json.loads(line)["epoch"] for line in f]
    assert epochs == list(range(1, 13))
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["config"]["seed"] == 1 and [r["epoch"] for r in metrics["history"]] == epochs

    killed_out = str(tmp_path / "killed")
    short = ["--epochs", "2", "--batch-size", "32", "--out", killed_out]
    killed = subprocess.Popen(_train(*short), cwd=ROOT)
    _wait_for_holder(killed_out, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    after = subprocess.run(_train(*short), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    assert os.path.exists(os.path.join(killed_out, "metrics.json"))
