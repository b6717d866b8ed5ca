"""The two Python steps of `benchmarks/device_check.sh`: what machine this is, and what the run
found.

    python benchmarks/device_summary.py env --platform gpu --out DIR      # DIR/env.json
    python benchmarks/device_summary.py summary --platform gpu --out DIR  # summary.json, .md

`env` records nvidia-smi's view, the Python and package versions and `jax.devices()`, and exits
1 when JAX's backend is not the expected platform (or PyTorch sees no GPU on a GPU machine).
`summary` reads what the parts left in DIR (`logs/parts.tsv`, `env.json`, `tests.xml`,
`compare_*/results.json`, `runs/*/metrics.json`) and writes each part's status, seconds and key
numbers: `summary.md` is the table to paste into docs/benchmarks.md.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy", "torch", "keras")
BACKENDS = {"cpu": "cpu", "gpu": "gpu"}  # --platform -> jax.default_backend()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> dict | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    runs = [subprocess.run(["nvidia-smi", *q], capture_output=True, text=True, timeout=30)
            for q in (query, [])]  # fmt: skip
    return {"gpus": runs[0].stdout.strip().splitlines(), "text": runs[1].stdout.splitlines()}


def environment(expected: str) -> tuple[dict, list[str]]:
    """This machine as the parts see it, and what does not match the expected platform."""
    import jax

    devices = jax.devices()
    info = {
        "date": datetime.date.today().isoformat(),
        "platform": expected,
        "jax_platforms": os.environ.get("JAX_PLATFORMS"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} x{os.cpu_count()}",
        "packages": {name: _version(name) for name in PACKAGES},
        "nvidia_smi": _nvidia_smi(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
    }
    problems = []
    if info["jax_backend"] != BACKENDS[expected]:
        problems.append(f"JAX runs on {info['jax_backend']}, expected {BACKENDS[expected]}")
    if info["packages"]["torch"]:
        import torch

        info["torch_cuda"] = torch.cuda.is_available()
        if expected == "gpu" and not info["torch_cuda"]:
            problems.append("PyTorch sees no GPU")
    return info, problems


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _tests(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    kinds = ("tests", "failures", "errors", "skipped")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in kinds}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _compare(path: str) -> dict | None:
    """compare.py's results.json, cut to median ms/step and the time relative to zoo's."""
    results = _read_json(path)
    if results is None:
        return None
    benchmarks = {
        name: {
            mode: {
                impl: {"median_ms": t["median_ms"], "ratio_to_zoo": t["ratio_to_zoo"]}
                for impl, t in timings.items()
            }
            for mode, timings in bench["timings"].items()
        }
        for name, bench in results["benchmarks"].items()
    }
    keep = ("machine", "dtype", "jax", "torch", "keras", "peak_gflops", "rounds")
    return {**{k: results.get(k) for k in keep}, "benchmarks": benchmarks}


def _preset(path: str) -> dict | None:
    """A train.py run's metrics.json, cut to its test metrics and how long it trained."""
    metrics = _read_json(path)
    if metrics is None:
        return None
    keep = ("model", "dataset", "dtype", "epochs", "best_epoch", "train_seconds")
    numbers = {k: metrics.get(k) for k in (*keep, "examples_per_second")}
    tests = {k: v for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float)}
    return numbers | tests


def _key_numbers(name: str, numbers: dict | None) -> str:
    """One table cell."""
    if not numbers:
        return ""
    if name == "env":
        return f"{numbers['device_kind']} x{len(numbers['devices'])}, jax {numbers['jax']}"
    if name == "tests":
        return ", ".join(f"{numbers[k]} {k}" for k in ("passed", "failures", "errors", "skipped"))
    if name.startswith("compare_"):
        ratios = [
            f"{bench} {impl} {t['ratio_to_zoo']:.2f}"
            for bench, modes in numbers["benchmarks"].items()
            for impl, t in modes["train"].items()
            if impl != "zoo"
        ]
        return f"train time / zoo's: {', '.join(ratios)}"
    tests = ", ".join(f"{k} {v:.4f}" for k, v in numbers.items() if k.startswith("test_"))
    return f"{tests} ({numbers['epochs']} epochs, {numbers['train_seconds']:.1f} s)"


def _safely(read, *args):
    """What `read` finds, or None with a note: a part killed mid-write leaves a broken file, and
    the summary of the other parts must still be written."""
    try:
        return read(*args)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        print(f"summary: {read.__name__}{args}: {error!r}", file=sys.stderr)
        return None


def summarize(out: str, platform_name: str, quick: bool) -> tuple[dict, str]:
    env = _safely(_read_json, os.path.join(out, "env.json"))
    found = {
        "env": env and {**env, "jax": env["packages"]["jax"]},
        "tests": _safely(_tests, os.path.join(out, "tests.xml")),
        "compare_float32": _safely(_compare, f"{out}/compare_float32/results.json"),
        "compare_bfloat16": _safely(_compare, f"{out}/compare_bfloat16/results.json"),
        "train_cnn": _safely(_preset, f"{out}/runs/cnn/metrics.json"),
        "train_lstm": _safely(_preset, f"{out}/runs/lstm/metrics.json"),
    }
    parts = []
    with open(os.path.join(out, "logs", "parts.tsv")) as f:
        for line in f.read().splitlines():
            name, status, code, seconds, limit = line.split("\t")
            parts.append({
                "name": name, "status": status, "exit_code": None if code == "-" else int(code),
                "seconds": float(seconds), "timeout_seconds": int(limit),
                "numbers": found.get(name),
            })  # fmt: skip
    machine = f"{env['device_kind']}, {env['machine']}" if env else "unknown machine"
    summary = {
        "date": datetime.date.today().isoformat(),
        "platform": platform_name,
        "quick": quick,
        "machine": machine,
        "ok": all(p["status"] == "ok" for p in parts),
        "parts": parts,
    }
    lines = [
        f"Device check of {summary['date']} on {machine} (`--platform {platform_name}"
        + (" --quick" if quick else "")
        + "`): "
        + ("every part ok." if summary["ok"] else "not every part ok."),
        "",
        "| part | status | exit | seconds | key numbers |",
        "|---|---|---|---|---|",
    ]
    for p in parts:
        cell = _safely(_key_numbers, p["name"], found.get(p["name"])) or ""
        code = "-" if p["exit_code"] is None else p["exit_code"]
        lines.append(f"| {p['name']} | {p['status']} | {code} | {p['seconds']:.1f} | {cell} |")
    for dtype in ("float32", "bfloat16"):
        results = found[f"compare_{dtype}"]
        if results:
            lines += ["", f"compare.py, {dtype}: {results['machine']}; jax {results['jax']}, "
                      f"torch {results['torch']}, keras {results['keras']}; peak matmul "
                      f"{results['peak_gflops']:.0f} GFLOP/s", "",
                      "| benchmark | mode | implementation | median ms/step | time / zoo's |",
                      "|---|---|---|---|---|"]  # fmt: skip
            for bench, modes in results["benchmarks"].items():
                for mode, timings in modes.items():
                    for impl, t in timings.items():
                        lines.append(
                            f"| {bench} | {mode} | {impl} | {t['median_ms']:.2f} | "
                            f"{t['ratio_to_zoo']:.2f} |"
                        )
    return summary, "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("env", "summary"))
    parser.add_argument("--platform", choices=tuple(BACKENDS), default="gpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.step == "env":
        info, problems = environment(args.platform)
        with open(os.path.join(args.out, "env.json"), "w") as f:
            json.dump(info | {"problems": problems}, f, indent=2)
        print(json.dumps({k: info[k] for k in ("jax_backend", "devices", "packages")}, indent=1))
        for problem in problems:
            print(f"env: {problem}", file=sys.stderr)
        return 1 if problems else 0
    summary, table = summarize(args.out, args.platform, args.quick)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
