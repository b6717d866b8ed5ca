"""--tensorboard: event files that hold what metrics.jsonl holds, read back record by record."""

import glob
import json
import os
import struct

import pytest

from zoo.training import TrainConfig, train_and_evaluate
from zoo.training.state import create_schedule
from zoo.training.tensorboard import ScalarWriter

pytest.importorskip("tensorboardX")


def read_scalars(directory: str) -> dict[str, dict[int, float]]:
    """`{tag: {step: value}}` of every event file in `directory`, parsed from the TFRecord
    framing (length, its CRC, the Event protobuf, its CRC) without TensorBoard."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            content = f.read()
        offset = 0
        while offset < len(content):
            (length,) = struct.unpack("<Q", content[offset : offset + 8])
            event = Event.FromString(content[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_each_record_is_written_at_its_step(tmp_path):
    writer = ScalarWriter(str(tmp_path))
    writer.write({"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.75}, 10, 1e-3)
    writer.write({"epoch": 2, "train_loss": 0.25, "val_accuracy": 0.875}, 20, 5e-4)
    writer.close()
    assert read_scalars(writer.directory) == {
        "train_loss": {10: 0.5, 20: 0.25},
        "val_accuracy": {10: 0.75, 20: 0.875},
        "learning_rate": {10: pytest.approx(1e-3), 20: pytest.approx(5e-4)},
    }


def test_a_run_writes_what_metrics_jsonl_holds_and_its_learning_rate(tmp_path):
    pytest.importorskip("sklearn")
    config = TrainConfig(
        model="convnet",
        epochs=2,
        batch_size=256,
        schedule="cosine",
        model_options={"features": (4,), "dense": ()},
    )
    train_and_evaluate(config, str(tmp_path), log=lambda line: None, tensorboard=True)
    scalars = read_scalars(str(tmp_path / "tensorboard"))
    with open(tmp_path / "metrics.jsonl") as f:
        history = [json.loads(line) for line in f]
    steps = 1258 // 256  # digits' training split, whole batches
    schedule = create_schedule(config, steps)
    for epoch, record in enumerate(history, 1):
        step = epoch * steps
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert scalars[name][step] == pytest.approx(record[name], rel=1e-6)
        assert scalars["learning_rate"][step] == pytest.approx(float(schedule(step - 1)))
    assert sorted(scalars["val_macro_f1"]) == [steps, 2 * steps]
