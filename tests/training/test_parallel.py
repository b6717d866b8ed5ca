"""Data parallel training: `sharding` and `pmap` over 8 forced host devices, and 2 processes of a
`jax.distributed` run on localhost, each compared with one device on the same global batches.

The device count of a process is fixed when JAX starts, so the multi-device runs are
subprocesses (`parallel_worker.py`, `train.py`) with `XLA_FLAGS` set.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from zoo import data
from zoo.training import ConfigError
from zoo.training import parallel as parallel_lib

ROOT = Path(__file__).parents[2]
WORKER = Path(__file__).with_name("parallel_worker.py")
RECORDS = ("devices", "processes", "loss_sum")


def environment(devices: int) -> dict[str, str]:
    return os.environ | {
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }


def start(args: list[str], devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=environment(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"{process.args} hung for {timeout} s:\n{err[-3000:]}")
    return process.returncode, out, err


# XLA:CPU aborts a run whose device threads do not all reach a collective within 40 s. With
# forced host devices on the 2-core CI machine this happened twice in CI (4 devices, then 2), at
# different collectives, and never in a 20,000-step stress loop of a sharded eval step (which
# waited for each step). The cause, found 2026-12-04: the loop queued steps without bound, and
# XLA:CPU's per-device launch queue (32) filled with steps waiting on each other; the loop now
# waits once two are queued (`parallel.InFlight`). The retry stays for the workers' own loops.
XLA_CPU_RENDEZVOUS_ABORT = "Termination timeout for"


def run(args: list[str], devices: int = 1, timeout: float = 240) -> tuple[int, str, str]:
    """Runs `args` to the end; once more if XLA:CPU's collective rendezvous aborted it."""
    code, out, err = finish(start(args, devices), timeout)
    if devices > 1 and code == -signal.SIGABRT and XLA_CPU_RENDEZVOUS_ABORT in err:
        print(f"retrying after an XLA:CPU rendezvous abort:\n{err[-1500:]}", file=sys.stderr)
        code, out, err = finish(start(args, devices), timeout)
    return code, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return dict(f)


def assert_same_training(result: dict, reference: dict) -> None:
    """Equal params and batch-norm statistics (1e-5) and the same summed loss of the last step."""
    names = [name for name in reference if name not in RECORDS]
    assert names and sorted(names) == sorted(n for n in result if n not in RECORDS)
    for name in names:
        np.testing.assert_allclose(
            result[name], reference[name], rtol=1e-5, atol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(result["loss_sum"], reference["loss_sum"], rtol=1e-5)


@pytest.mark.parametrize("model", ["convnet", "lstm"])
def test_sharding_and_pmap_over_8_devices_match_one_device(tmp_path, model):
    # convnet has batch norm: pmap must compute its statistics over all 8 shards.
    code, _, err = run(
        [str(WORKER), "--model", model, "--parallel", "none,sharding,pmap", "--out", str(tmp_path)],
        devices=8,
    )
    assert code == 0, err[-3000:]
    reference = load(tmp_path / "none.npz")
    assert reference["devices"] == 1
    for name in ("sharding", "pmap"):
        result = load(tmp_path / f"{name}.npz")
        assert result["devices"] == 8, name
        assert_same_training(result, reference)


@pytest.fixture(scope="module")
def one_process_convnet(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one_process")
    code, _, err = run([str(WORKER), "--model", "convnet", "--parallel", "none", "--out", str(out)])
    assert code == 0, err[-3000:]
    return load(out / "none.npz")


@pytest.mark.parametrize("layout", ["sharding", "pmap"])
def test_two_processes_train_together_like_one(tmp_path, one_process_convnet, layout):
    """2 processes x 2 devices on localhost (gloo collectives), each reading half of every batch."""
    address = f"localhost:{free_port()}"
    processes = [
        start(
            [str(WORKER), "--model", "convnet", "--parallel", layout, "--out", str(tmp_path)]
            + ["--coordinator", address, "--num-processes", "2", "--process-id", str(rank)],
            devices=2,
        )
        for rank in range(2)
    ]
    for process in processes:
        code, _, err = finish(process)
        assert code == 0, err[-3000:]
    first, second = (load(tmp_path / f"{layout}-{rank}.npz") for rank in range(2))
    assert first["processes"] == 2 and first["devices"] == 4
    for name in first:  # the same params in both processes, bit for bit
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert_same_training(first, one_process_convnet)


@pytest.mark.slow
def test_each_of_two_processes_decodes_only_its_shard_of_an_image_folder(tmp_path):
    """2 `jax.distributed` processes load a PNG folder as a run does and read 6 batches of 8,
    one through 2 grain workers: each checks half of the files at load, and decodes the files of
    its half of every batch, and no other."""
    pytest.importorskip("grain")
    pytest.importorskip("PIL")
    from zoo.data.batching import epoch_plan
    from zoo.data.images import load_image_folder, save_image_folder

    digits = data.load_digits(seed=0).train
    save_image_folder(tmp_path / "png", digits.x[:120], digits.y[:120], [str(d) for d in range(10)])
    address = f"localhost:{free_port()}"
    flags = ["--images", str(tmp_path / "png"), "--steps", "6", "--batch-size", "8"]
    processes = [
        start(
            [str(WORKER), *flags, "--out", str(tmp_path), "--data-workers", str(2 * rank)]
            + ["--coordinator", address, "--num-processes", "2", "--process-id", str(rank)]
        )
        for rank in range(2)
    ]
    for process in processes:
        code, _, err = finish(process)
        assert code == 0, err[-3000:]
    train = load_image_folder(tmp_path / "png").train  # the split both processes made
    batches = epoch_plan(len(train.x), 8, seed=0)[:6]
    for rank in range(2):
        read = load(tmp_path / f"images-{rank}.npz")
        own = {train.x.files[row] for b in batches for row in b.rows[4 * rank : 4 * rank + 4]}
        assert read["rows"] == 24 and set(read["files"].tolist()) == own
        assert len(read["probed"]) == 60  # its half of the 120 files, checked at load
    probed = [set(load(tmp_path / f"images-{rank}.npz")["probed"].tolist()) for rank in range(2)]
    assert not probed[0] & probed[1] and len(probed[0] | probed[1]) == 120


def assert_close_runs(result: dict, reference: dict) -> None:
    """Whole runs agree to 1%: over tens of steps float rounding grows (reversing the rows of
    every batch on one device moves a batch-norm convnet's weights by 5e-3 in 33 steps), while a
    wrong gradient average or per-shard batch statistics move the losses by far more."""
    assert result["steps"] == reference["steps"]
    got = [epoch["val_loss"] for epoch in result["history"]]
    np.testing.assert_allclose(got, [e["val_loss"] for e in reference["history"]], rtol=1e-2)
    if result["resumed_from_step"] is None:  # else epochs' train metrics cover only some steps
        got = [epoch["train_loss"] for epoch in result["history"]]
        want = [epoch["train_loss"] for epoch in reference["history"]]
        np.testing.assert_allclose(got, want, rtol=1e-2)
    np.testing.assert_allclose(result["test_loss"], reference["test_loss"], rtol=1e-2)
    assert abs(result["test_accuracy"] - reference["test_accuracy"]) <= 0.01


def cli(*flags: str) -> list[str]:
    return [str(ROOT / "train.py"), "--quiet", *flags]


@pytest.mark.slow
def test_train_py_in_two_processes_saves_resumes_and_matches_one_process(tmp_path):
    """The CLI end to end: 2 processes stop at step 20 (a checkpoint written the multi-process
    way), one process continues to step 40, 2 processes finish the run, and the result is that of
    an uninterrupted one-process run; only process 0 writes metrics and prints."""
    # SGD at 0.01: 1 and 2 devices end these 78 steps within 1e-5 of each other, and a wrong
    # gradient average would scale its steps. With the preset (Adam at 1e-3) the run amplifies
    # rounding: a 1e-5 relative change of the learning rate moves the final val loss by 1.4%.
    flags = ["--epochs", "2", "--augment", "none", "--batch-size", "32"]
    flags += ["--optimizer", "sgd", "--lr", "0.01"]
    reference = start(cli(*flags, "--out", str(tmp_path / "one")))
    shared = tmp_path / "two"

    def run_pair(*extra: str) -> list[tuple[int, str, str]]:
        address = f"localhost:{free_port()}"
        pair = [
            start(
                cli(*flags, "--out", str(shared), *extra)
                + ["--coordinator", address, "--num-processes", "2", "--process-id", str(rank)]
            )
            for rank in range(2)
        ]
        return [finish(process) for process in pair]

    stopped = run_pair("--stop-after-steps", "20")
    assert [code for code, _, _ in stopped] == [143, 143], stopped[0][2][-2000:]
    assert (shared / "checkpoints" / "20").is_dir()
    assert not (shared / "metrics.json").exists()
    # One process takes over for 20 steps: a checkpoint holds one host copy of the state.
    code, _, err = run(cli(*flags, "--out", str(shared), "--stop-after-steps", "20"))
    assert code == 143 and (shared / "checkpoints" / "40").is_dir(), err[-2000:]
    finished = run_pair()
    assert [code for code, _, _ in finished] == [0, 0], finished[0][2][-2000:]
    assert "test |" in finished[0][1]
    assert "test |" not in finished[1][1] and "wrote" not in finished[1][1]  # (gloo prints)
    code, _, err = finish(reference)
    assert code == 0, err[-2000:]
    two = json.loads((shared / "metrics.json").read_text())
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert two["processes"] == 2 and two["resumed_from_step"] == 40 and one["processes"] == 1
    assert two["steps"] == one["steps"]
    assert_close_runs(two, one)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """JAX's preemption service spreads the notice and picks the step all processes save at."""
    address = f"localhost:{free_port()}"
    pair = [
        start(
            cli("--epochs", "50", "--augment", "none", "--out", str(tmp_path))
            + ["--coordinator", address, "--num-processes", "2", "--process-id", str(rank)]
        )
        for rank in range(2)
    ]
    deadline, history = time.monotonic() + 120, tmp_path / "metrics.jsonl"
    while not history.exists() or not history.stat().st_size:  # training is under way
        assert time.monotonic() < deadline and pair[0].poll() is None, "no epoch ended"
        time.sleep(0.2)
    pair[1].send_signal(signal.SIGTERM)
    results = [finish(process) for process in pair]
    assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
    steps = [int(re.search(r"after step (\d+)", err).group(1)) for _, _, err in results]
    assert steps[0] == steps[1] and (tmp_path / "checkpoints" / str(steps[0])).is_dir()


def test_a_batch_that_does_not_split_over_the_devices_is_refused(tmp_path):
    code, _, err = run(cli("--batch-size", "30", "--out", str(tmp_path)), devices=8)
    assert code == 2
    assert "--batch-size 30 does not split evenly over 8 devices" in err
    assert "such as 24 or 32" in err
    code, _, err = run(
        cli("--batch-size", "30", "--parallel", "pmap", "--out", str(tmp_path)), devices=8
    )
    assert code == 2 and "(--parallel pmap)" in err
    assert not (tmp_path / "metrics.json").exists()


def test_a_missing_coordinator_or_process_fails_clearly_within_the_timeout(tmp_path):
    address = f"localhost:{free_port()}"
    flags = ["--coordinator", address, "--num-processes", "2", "--init-timeout", "3"]
    begin = time.monotonic()
    alone = start(cli(*flags, "--process-id", "0", "--out", str(tmp_path / "0")))
    nobody = f"localhost:{free_port()}"
    orphan = start(cli("--coordinator", nobody, *flags[2:], "--process-id", "1"))
    (code_alone, _, err_alone), (code_orphan, _, err_orphan) = finish(alone), finish(orphan)
    assert time.monotonic() - begin < 60
    assert code_alone == 1 and "not all 2 processes joined it within 3 s" in err_alone
    assert code_orphan == 1 and "could not reach the coordinator at localhost:" in err_orphan
    assert "Check failure" not in err_alone + err_orphan  # our message, not JAX's abort


@pytest.mark.parametrize(
    "args, message",
    [
        ((3, 2, "localhost:1234"), "process_id 3 is out of range for num_processes 2: use 0..1"),
        ((-1, 2, "localhost:1234"), "process_id -1 is out of range"),
        ((0, 0, "localhost:1234"), "num_processes must be >= 1"),
        ((0, 2, "localhost"), "coordinator must be HOST:PORT"),
        ((0, 2, "localhost:99999"), "coordinator must be HOST:PORT"),
    ],
)
def test_bad_distributed_arguments_are_refused_before_joining(args, message):
    process_id, num_processes, address = args
    with pytest.raises(ConfigError, match=message):
        parallel_lib.initialize_distributed(address, num_processes, process_id, timeout=1)


def test_cli_names_the_distributed_flags(tmp_path):
    code, _, err = run(cli("--process-id", "2", "--num-processes", "2", "--coordinator", "h:1"))
    assert code == 2 and "--process-id 2 is out of range for num_processes 2" in err
    code, _, err = run(cli("--process-id", "1"))
    assert code == 2 and "needs --coordinator, --num-processes as well" in err
    process = subprocess.run(
        [sys.executable, *cli()],
        cwd=ROOT,
        env=environment(1) | {"JAX_NUM_PROCESSES": "two"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.strip() == "train.py: error: JAX_NUM_PROCESSES='two' must be an integer"


def test_unknown_layout_and_prefetch_order():
    with pytest.raises(ConfigError, match="parallel must be one of sharding, pmap, none"):
        parallel_lib.create("dp")
    put = []

    def record(batch):
        put.append(batch)
        return batch * 10

    consumed = []
    for value in parallel_lib.prefetch(range(5), record, size=2):
        consumed.append(value)
        assert len(put) == min(len(consumed) + 1, 5)  # the next is placed while this one runs
    assert consumed == [0, 10, 20, 30, 40] and put == [0, 1, 2, 3, 4]


def test_one_device_layouts_round_trip_a_state(key):
    tree = {"w": jax.random.normal(key, (3, 2)), "step": np.int32(7), "key": key}
    for name in ("none", "sharding", "pmap"):
        layout = parallel_lib.create(name, jax.devices()[:1])
        back = layout.fetch(layout.put({k: v for k, v in tree.items() if k != "key"}))
        np.testing.assert_array_equal(back["w"], tree["w"])
        assert int(back["step"]) == 7
        placed_key = layout.put(key)
        assert jax.dtypes.issubdtype(placed_key.dtype, jax.dtypes.prng_key)


def test_train_py_gives_the_same_run_with_every_layout(tmp_path):
    """The whole loop (train steps, batch-norm statistics, evaluation, checkpoints) under pmap and
    sharding over 2 devices, against one device. (Not more devices than the CI machine's 2 cores:
    once, 4 forced devices here hit XLA:CPU's 40 s collective rendezvous timeout with only 2 of
    4 device threads arrived.)"""
    flags = ["--model", "convnet", "--model-option", "batch_norm=True", "--epochs", "1"]
    flags += ["--batch-size", "128"]  # 10 steps: each waits for both device threads
    results = {}
    for name in ("none", "pmap", "sharding"):
        code, _, err = run(cli(*flags, "--parallel", name, "--out", str(tmp_path / name)), 2)
        assert code == 0, err[-2000:]
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert len(results["none"]["devices"]) == 1
    for name in ("pmap", "sharding"):
        assert len(results[name]["devices"]) == 2 and results[name]["parallel"] == name
        assert_close_runs(results[name], results["none"])


def test_default_cpu_devices_splits_recurrent_models_over_the_cores(monkeypatch):
    monkeypatch.setattr(parallel_lib.runtime, "cpu_cores", lambda: 4)
    default = parallel_lib.default_cpu_devices
    assert default("lstm", 64) == 4 and default("seq2seq", 128) == 4
    assert default("gru", 33) == 3  # the most devices that split the batch evenly
    assert default("tagger", 62) == 2 and default("charlm", 31) == 1
    assert default("charlm", 64, model_options={"hidden_sizes": (256,)}) == 4
    assert default("lstm", 64, processes=2) == 4 and default("lstm", 12, processes=2) == 3
    for model in ("cnn", "resnet18", "mobilenet_v2", "tcn", "convlstm", "cnn_lstm", "forecast"):
        assert default(model, 64) == 1, model  # measured slower on several devices


def test_default_cpu_devices_keeps_wide_recurrent_layers_on_one_device(monkeypatch):
    monkeypatch.setattr(parallel_lib.runtime, "cpu_cores", lambda: 2)
    default = parallel_lib.default_cpu_devices
    widest = parallel_lib.SPLIT_WIDTH
    assert default("lstm", 64, model_options={"hidden_sizes": (64, widest)}) == 2
    assert default("lstm", 64, model_options={"hidden_sizes": (64, widest + 1)}) == 1
    assert default("gru", 64, model_options={"hidden_sizes": [2 * widest]}) == 1
    assert default("seq2seq", 64, model_options={"hidden_size": 2 * widest}) == 1
    assert default("seq2seq", 64, model_options={"encoder_sizes": (2 * widest,)}) == 1
    assert default("charlm", 64) == 1  # its default layer: 512 wide


def test_in_flight_waits_for_the_oldest_step_beyond_its_depth(monkeypatch):
    waited = []
    monkeypatch.setattr(parallel_lib.jax, "block_until_ready", waited.append)
    in_flight = parallel_lib.InFlight(depth=2)
    for step in range(5):
        in_flight.add(step)
        assert len(in_flight.queue) == min(step + 1, 2)
    assert waited == [0, 1, 2]


RECURRENT_RUN = ["--model", "lstm", "--model-option", "hidden_sizes=(16,)", "--epochs", "1"]
RECURRENT_RUN += ["--batch-size", "48"]


@pytest.mark.slow
def test_train_py_splits_a_recurrent_model_over_the_cores_with_one_devices_results(tmp_path):
    """By default (`--cpu-devices auto`) a recurrent model trains on one CPU device per core,
    as the same run on one device. (A count set in XLA_FLAGS is kept: test_runtime.py.)"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < 2:
        pytest.skip("one core: auto makes one device")
    results = {}
    for name, flags in {"auto": [], "one": ["--cpu-devices", "1"]}.items():
        out = tmp_path / name
        process = _train_py_plainly(*cli(*RECURRENT_RUN, *flags, "--out", str(out)))
        assert process.returncode == 0, process.stderr[-2000:]
        results[name] = json.loads((out / "metrics.json").read_text())
    expected = max(n for n in range(1, cores + 1) if 48 % n == 0)
    assert len(results["auto"]["devices"]) == expected
    assert len(results["one"]["devices"]) == 1
    assert_close_runs(results["auto"], results["one"])


@pytest.mark.slow
def test_train_py_keeps_a_wide_recurrent_model_on_one_device_and_says_why(tmp_path):
    width = parallel_lib.SPLIT_WIDTH + 4
    flags = ["--model", "lstm", "--model-option", f"hidden_sizes=({width},)", "--epochs", "1"]
    process = _train_py_plainly(str(ROOT / "train.py"), *flags, "--out", str(tmp_path))
    assert process.returncode == 0, process.stderr[-2000:]
    assert f"devices: 1 x cpu ({width}-wide layers use every core already" in process.stdout
    assert len(json.loads((tmp_path / "metrics.json").read_text())["devices"]) == 1


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_cpu_device_count_is_refused(value):
    process = subprocess.run(
        [sys.executable, *cli("--cpu-devices", value)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert f"--cpu-devices: expected auto or a count of at least 1, got {value!r}" in process.stderr


def _train_py_plainly(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` (train.py and its flags) as a user runs it: CPU only, no XLA_FLAGS, so the
    device count is train.py's own choice."""
    plain = os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    plain.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=plain, capture_output=True, text=True, timeout=240
    )
