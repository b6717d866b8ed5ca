"""benchmarks/compare.py, scaling.py and sizes.py --quick run and write well-formed reports
(timings are not judged), and every implementation of the CNN families and of seq2seq computes
zoo's function."""

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


@pytest.fixture(scope="module")
def compare():
    """benchmarks/compare.py as a module (it imports cnn_families.py from beside it)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module("compare")
    finally:
        sys.path.remove(BENCHMARKS)


# MobileNetV2 (80 s here, 2026-12-01) is checked by every compare.py run, which records each
# peer's logit difference in results.json; its last blocks see 1x1 maps, where batch norm over
# fewer than 16 examples rounds float32 into differences of 0.1 (in float64 they agree to 1e-9).
@pytest.mark.slow
@pytest.mark.parametrize("name, batch", [("resnet18", 2)])
def test_cnn_family_peers_compute_zoos_function(compare, name, batch):
    """At a small batch, each peer's initial weights imported into zoo give the peer's own
    logits, with batch norm on running and on batch statistics: what makes the timings compare
    the same math. Only forward passes: no step is compiled."""
    peers = {
        p: pytest.importorskip(m).__version__ for p, m in [("pytorch", "torch"), ("keras", "keras")]
    }
    bench = dataclasses.replace(compare.BENCHMARKS[name], batch=batch)
    x, y = compare.batch(bench)
    impls = compare.implementations(bench, x, y, peers, "float32", compile=False)
    differences = compare.agreement(bench, x, impls)
    assert set(differences) == {"flax", "pytorch", "keras"}
    for peer, difference in differences.items():
        logits = impls[peer]["train_logits"]
        assert logits.shape == impls[peer]["logits"].shape == (batch, 10), peer
        scale = np.max(np.abs(logits))
        # Not a vacuous check: the two examples' logits differ (they are not the head's bias).
        assert np.max(np.abs(logits[0] - logits[1])) > 0.1 * scale, peer
        assert difference < 1e-4 * scale, (peer, difference)


@pytest.mark.slow  # 11 s here, most of it Keras initialising its variables op by op
def test_seq2seq_peers_compute_zoos_function(compare):
    """At a small batch with short sources among them (so the masking of source padding in
    the encoder and the attention is exercised), the PyTorch and Keras seq2seq peers' initial
    weights imported into zoo's default seq2seq give the peer's own teacher-forced logits: what
    makes the timings compare the same math. Only forward passes: no step is compiled."""
    peers = {
        p: pytest.importorskip(m).__version__ for p, m in [("pytorch", "torch"), ("keras", "keras")]
    }
    bench = dataclasses.replace(compare.BENCHMARKS["seq2seq"], batch=7)
    x, y = compare.batch(bench)
    source_length, target_length = bench.shape
    assert x.lengths.min() < source_length and (y == 0).any()  # padded sources and targets
    impls = compare.implementations(bench, x, y, peers, "float32", compile=False)
    differences = compare.agreement(bench, x, impls)
    assert set(differences) == {"pytorch", "keras"}
    for peer, difference in differences.items():
        logits = impls[peer]["logits"]
        assert logits.shape == (7, target_length, 33), peer
        scale = np.max(np.abs(logits))
        assert np.max(np.abs(logits[0] - logits[1])) > 0.1 * scale, peer  # not all the bias
        assert difference < 1e-4 * scale, (peer, difference)


@pytest.mark.slow
def test_compare_quick_writes_results(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--quick", "--only",
         "cnn,gru", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["peak_gflops"] > 0
    assert set(results["benchmarks"]) == {"cnn", "gru"}  # the LSTM takes the GRU's code path
    for name, bench in results["benchmarks"].items():
        assert bench["flops"]["train"] > bench["flops"]["infer"] > 0, name
        # The same math: every peer's weights, imported into zoo, give its logits.
        differences = bench["max_logit_difference"]
        assert set(differences) == set(bench["timings"]["train"]) - {"zoo"}, name
        assert max(differences.values()) < 1e-4, (name, differences)
        for mode in ("train", "infer"):
            timings = bench["timings"][mode]
            assert {"zoo", "flax"} <= set(timings)
            assert timings["zoo"]["ratio_to_zoo"] == 1.0
            for t in timings.values():
                seconds = t["median_ms"] / 1e3
                assert t["median_ms"] > 0 and t["warmup_seconds"] > 0
                assert abs(t["gflops"] - bench["flops"][mode] / seconds / 1e9) < 1e-6 * t["gflops"]
    # zoo's GRU step splits its batch over the cores' CPU devices, as train.py does; the CNN's not
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gru_devices = max(n for n in range(1, cores + 1) if 64 % n == 0)
    assert results["benchmarks"]["gru"]["zoo_devices"] == gru_devices
    assert results["benchmarks"]["cnn"]["zoo_devices"] == 1
    assert results["about"]["versions"]["jax"] and results["about"]["cores"] == cores
    text = (tmp_path / "results.md").read_text()
    assert "| cnn | train | zoo |" in text and "| gru | infer | flax |" in text
    for name, bench in results["benchmarks"].items():  # one verdict line per benchmark
        ratios = [t["ratio_to_zoo"] for i, t in bench["timings"]["train"].items() if i != "zoo"]
        fastest = "zoo fastest" if min(ratios) >= 1.0 else "faster than zoo"
        assert re.search(rf"^- {name} train: .*{fastest}", text, re.M), (name, text)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "results.png").stat().st_size > 0


@pytest.mark.slow
def test_scaling_quick_writes_results(tmp_path):
    out = tmp_path / "scaling.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "scaling.py"), "--quick",
         "--devices", "1,2", "--models", "lstm", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    timings = results["benchmarks"]["lstm"]
    assert set(timings) == {"1", "2"}
    assert timings["1"]["efficiency"] == 1.0
    for n, t in timings.items():
        assert t["median_ms"] > 0
        expected = int(n) * results["per_device_batch"] / (t["median_ms"] / 1e3)
        assert abs(t["examples_per_second"] - expected) < 1e-6 * expected
    assert "| lstm | 2 | 64 |" in result.stdout


def test_presets_records_each_run_and_merges_rows(tmp_path):
    pytest.importorskip("statsmodels")
    out = tmp_path / "presets.json"
    out.write_text(json.dumps({"cnn seed 0": {"test_accuracy": 0.5}}))  # an earlier row stays
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "presets.py"), "forecast", "--runs",
         str(tmp_path / "runs"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert set(table) == {"cnn seed 0", "forecast seed 0"}
    row = table["forecast seed 0"]
    metrics = json.loads((tmp_path / "runs" / "forecast" / "metrics.json").read_text())
    assert row["test_mse"] == metrics["test_mse"] and row["naive_mse"] == metrics["naive_mse"]
    assert row["train_seconds"] == metrics["train_seconds"] > 0
    assert row["command"] == "python train.py --model forecast --seed 0"
    assert row["dataset"] == "series" and row["epochs"] == metrics["epochs"]


@pytest.mark.slow
def test_sizes_quick_writes_every_point(tmp_path):
    """sizes.py --quick: two points a sweep, the base point measured once and shown in each of
    the LSTM's sweeps, positive times, and the ratio PyTorch / zoo of the medians."""
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "sizes.py"), "--quick", "--only", "lstm",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "sizes.json").read_text())
    sweeps = results["sweeps"]
    values = {name: [p["value"] for p in sweep["points"]] for name, sweep in sweeps.items()}
    assert values == {"lstm batch": [32, 64], "lstm steps": [25, 28], "lstm hidden": [64, 128]}
    base = [p for sweep in sweeps.values() for p in sweep["points"] if p["base"]]
    assert [(p["batch"], p["shape"], p["hidden"]) for p in base] == [(64, [28, 28], 128)] * 3
    assert base[0]["timings"] == base[1]["timings"] == base[2]["timings"]  # timed once
    for name, sweep in sweeps.items():
        for p in sweep["points"]:
            timings = p["timings"]
            assert set(timings) == ({"zoo", "pytorch"} if results["torch"] else {"zoo"})
            assert timings["zoo"]["compile_seconds"] > 0, name
            for t in timings.values():
                assert t["median_ms"] > 0, name
                expected = p["batch"] / (t["median_ms"] / 1e3)
                assert abs(t["examples_per_second"] - expected) < 1e-6 * expected, name
            if results["torch"]:
                ratio = timings["pytorch"]["median_ms"] / timings["zoo"]["median_ms"]
                assert p["ratio"] == pytest.approx(ratio, rel=1e-12), name
            else:
                assert p["ratio"] is None, name
    text = (tmp_path / "sizes.md").read_text()
    assert "### lstm steps (batch 64, hidden 128)" in text and "| 28 (base) |" in text
