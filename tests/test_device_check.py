"""benchmarks/device_check.sh, the script a lent GPU machine runs (docs/devices.md): its CPU dry
run goes through every part and summarizes them, and bad flags are refused before anything runs."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.sh")
# In the order the script runs them.
PARTS = "install env tests compare_float32 train_cnn train_lstm compare_bfloat16".split()
USAGE = "usage: bash benchmarks/device_check.sh --out DIR [--platform cpu|gpu] [--quick]"


def device_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", SCRIPT, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_cpu_dry_run_runs_and_summarizes_every_part(tmp_path):
    pytest.importorskip("sklearn")  # the presets train on the bundled digits
    out = tmp_path / "out"
    done = device_check("--platform", "cpu", "--quick", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]

    summary = json.loads((out / "summary.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == PARTS
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(PARTS, "ok")
    assert summary["ok"] and summary["platform"] == "cpu" and summary["quick"]
    assert parts["tests"]["numbers"]["passed"] == 3
    for dtype in ("float32", "bfloat16"):
        compared = parts[f"compare_{dtype}"]["numbers"]
        assert compared["dtype"] == dtype and compared["keras"] is None  # hidden, as on the GPU
        assert compared["benchmarks"]["cnn"]["train"]["zoo"]["ratio_to_zoo"] == 1.0
    for model in ("cnn", "lstm"):
        assert 0.0 <= parts[f"train_{model}"]["numbers"]["test_accuracy"] <= 1.0

    env = json.loads((out / "env.json").read_text())
    assert env["platform"] == "cpu" and env["jax_backend"] == "cpu" and env["problems"] == []
    assert env["devices"] and all("cpu" in d.lower() for d in env["devices"])

    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("|")]
    for name in PARTS:
        assert sum(row.startswith(f"| {name} | ok | 0 |") for row in rows) == 1, name

    # The device tool brings back 8 files at most: the details travel packed.
    assert sorted(os.listdir(out)) == [
        "details.tar.gz",
        "env.json",
        "summary.json",
        "summary.md",
        "tests.xml",
    ]
    with tarfile.open(out / "details.tar.gz") as packed:
        names = set(packed.getnames())
    assert {"logs/parts.tsv", "compare_bfloat16/results.json", "runs/lstm/metrics.json"} <= names
    assert {f"logs/{name}.log" for name in PARTS} <= names


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "never", "--gpus", "8"], "unknown flag '--gpus'"),
        (["--platform", "cpu", "--quick"], "--out DIR is required"),
        (["--out", "never", "--platform", "tpu"], "--platform must be cpu or gpu, got 'tpu'"),
        (["--out"], "--out needs a directory"),
    ],
)
def test_bad_flags_exit_2_with_the_usage_line_before_anything_runs(args, message):
    done = device_check(*args, timeout=30)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"device_check.sh: {message}", USAGE]
    assert not os.path.exists(os.path.join(ROOT, "never"))
