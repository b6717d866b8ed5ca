"""benchmarks/compare.py --quick runs and writes a well-formed report (timings are not judged)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_compare_quick_writes_results(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--quick", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("cnn", "lstm"):
        timings = results["benchmarks"][name]["timings"]
        assert timings["zoo"]["ratio_to_zoo"] == 1.0
        assert {"zoo", "flax"} <= set(timings)
        assert all(t["median_ms"] > 0 for t in timings.values())
    assert "| cnn train step | zoo |" in (tmp_path / "results.md").read_text()
