import json

import numpy as np
import pytest

from zoo.data import DataError, load_arrays, read_npz


def _npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _examples(n=50, steps=6, features=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, steps, features)).astype(np.float32), rng.integers(0, 4, n)


def test_arrays_are_split_by_the_seed_without_losing_a_row(tmp_path):
    x, y = _examples()
    x[:, 0, 0] = np.arange(50)  # a row id
    dataset = load_arrays(_npz(tmp_path, x=x, y=y), seed=3)
    rows = np.concatenate([split.x[:, 0, 0] for split in dataset[:3]])
    np.testing.assert_array_equal(np.sort(rows), np.arange(50))
    assert [len(split.x) for split in dataset[:3]] == [35, 5, 10]
    assert dataset.num_classes == 4 and dataset.task == "classify"
    for split in dataset[:3]:
        np.testing.assert_array_equal(split.y, y[split.x[:, 0, 0].astype(int)])
    again = load_arrays(_npz(tmp_path, x=x, y=y), seed=3)
    np.testing.assert_array_equal(again.test.x, dataset.test.x)
    assert not np.array_equal(load_arrays(_npz(tmp_path, x=x, y=y), seed=4).test.x, again.test.x)


def test_given_splits_are_kept_as_they_are(tmp_path):
    x, y = _examples()
    path = _npz(
        tmp_path, x=x[:30], y=y[:30], x_val=x[30:40], y_val=y[30:40], x_test=x[40:], y_test=y[40:]
    )
    dataset = load_arrays(path)
    np.testing.assert_array_equal(dataset.validation.x, x[30:40])
    np.testing.assert_array_equal(dataset.test.y, y[40:])
    np.testing.assert_array_equal(np.sort(dataset.train.x[:, 0, 0]), np.sort(x[:30, 0, 0]))


def test_lengths_travel_with_their_rows(tmp_path):
    x, y = _examples()
    lengths = np.random.default_rng(1).integers(1, 7, 50)
    x[:, 0, 0] = np.arange(50)
    dataset = load_arrays(_npz(tmp_path, x=x, y=y, lengths=lengths))
    for split in dataset[:3]:
        np.testing.assert_array_equal(split.lengths, lengths[split.x[:, 0, 0].astype(int)])


def test_targets_follow_the_task(tmp_path):
    x, _ = _examples()
    regress = load_arrays(_npz(tmp_path, x=x, y=x[:, -1, 0]), task="regress")
    assert regress.num_classes == 1 and regress.train.y.shape == (35, 1)
    tokens = np.random.default_rng(0).integers(0, 9, (50, 12))
    language = load_arrays(_npz(tmp_path, x=tokens, y=np.roll(tokens, -1, 1)), task="language")
    assert language.num_classes == 9 and language.train.x.dtype == np.int32
    whole = load_arrays(_npz(tmp_path, x=x, y=np.arange(50.0) % 3))
    assert whole.train.y.dtype == np.int32 and whole.num_classes == 3
    column = load_arrays(_npz(tmp_path, x=x, y=(np.arange(50) % 3)[:, None]), seed=1)
    flat = load_arrays(_npz(tmp_path, x=x, y=np.arange(50) % 3), seed=1)
    np.testing.assert_array_equal(column.train.y, flat.train.y)
    assert column.train.y.shape == (35,)


def test_tags_per_step_from_arrays_and_ragged_json_lines(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 6, 2))
    tags = (features[..., 0] > 0).astype(int)
    tagged = load_arrays(_npz(tmp_path, x=features, y=tags), task="tag")
    assert tagged.num_classes == 2 and tagged.train.y.shape == (21, 6)
    sequences = [rng.normal(size=(int(n), 2)).round(3).tolist() for n in (3, 1, 4)]
    path = tmp_path / "tags.jsonl"
    lines = [{"x": s, "y": [int(step[0] > 0) + 1 for step in s]} for s in sequences]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = load_arrays(path, task="tag", validation=0.0, test=0.0)
    assert dataset.num_classes == 3 and dataset.train.y.shape == (3, 4)
    for x, y, length in zip(*dataset.train, strict=True):
        match = [
            line
            for line in lines
            if len(line["x"]) == length and np.allclose(line["x"], x[:length])
        ]
        assert match and list(y[:length]) == match[0]["y"] and not y[length:].any()
    lines[1]["y"] = [0, 1]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError, match="example 2 has 1 steps of x but 2 of y"):
        load_arrays(path, task="tag")
    with pytest.raises(DataError, match=r"a tagger takes x of shape \(N, steps, features\)"):
        load_arrays(_npz(tmp_path, x=features, y=np.zeros(30, int)), task="tag")


def test_ragged_json_lines_are_padded_with_their_lengths(tmp_path):
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(int(n), 2)).round(3).tolist() for n in rng.integers(1, 9, 40)]
    path = tmp_path / "seqs.jsonl"
    path.write_text(
        "".join(json.dumps({"x": s, "y": i % 3}) + "\n" for i, s in enumerate(sequences))
    )
    dataset = load_arrays(path, validation=0.0, test=0.0, seed=0)
    assert dataset.train.x.shape == (40, max(map(len, sequences)), 2)
    for x, length in zip(dataset.train.x, dataset.train.lengths, strict=True):
        match = [s for s in sequences if len(s) == length and np.allclose(s, x[:length])]
        assert match and not x[length:].any()


@pytest.mark.parametrize(
    "arrays, task, message",
    [
        ({"x": np.zeros((5, 2)), "y": np.zeros(4, int)}, "classify", "x has 5 rows but y has 4"),
        ({"x": np.zeros((5, 2))}, "classify", "lacks y"),
        (
            {"x": np.zeros((5, 2)), "y": np.zeros(5, int), "x_val": np.zeros((2, 2))},
            "classify",
            "lacks y_val",
        ),
        ({"x": np.zeros((5, 2)), "y": np.full(5, 0.5)}, "classify", "y must hold integer labels"),
        ({"x": np.zeros((5, 2)), "y": -np.ones(5, int)}, "classify", "negative labels"),
        ({"x": np.zeros((5, 2)), "y": np.zeros(5, int)}, "classify", "a single class"),
        (
            {"x": np.zeros((5, 3, 1)), "y": np.arange(5) % 2, "lengths": np.array([1, 2, 3, 4, 3])},
            "classify",
            r"lengths\[3\] is 4, outside 1..3",
        ),
        (
            {"x": np.zeros((5, 3)), "y": np.arange(5) % 2, "lengths": np.ones(4, int)},
            "classify",
            r"lengths must be \(5,\) integers",
        ),
        ({"x": np.full((5, 2), np.nan), "y": np.arange(5) % 2}, "classify", "NaN or infinite"),
        ({"x": np.zeros((5, 2)), "y": np.zeros(5), "w": np.zeros(5)}, "classify", "holds arrays w"),
        (
            {
                "x": np.zeros((5, 2)),
                "y": np.arange(5) % 2,
                "x_val": np.zeros((2, 3)),
                "y_val": np.zeros(2, int),
            },
            "classify",
            r"validation split maps \(3,\)",
        ),
        ({"x": np.zeros((5, 2)), "y": np.array(list("abcde"))}, "classify", "must be a numeric"),
        (
            {"x": np.zeros((5, 2)), "y": np.eye(3)[[0, 1, 2, 0, 1]]},
            "classify",
            r"y of shape \(N,\), one class id per example; got \(5, 3\); it looks one-hot",
        ),
        ({"x": np.zeros((5, 2)), "y": np.zeros((5, 2, 2), int)}, "classify", r"got \(5, 2, 2\)$"),
    ],
)
def test_bad_arrays_are_named(tmp_path, arrays, task, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as error:
        load_arrays(path, task=task)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no examples"),
        (b'{"x": [1, 2], "y": 1}\n{"x": [1], "z": 0}\n', r'line 2 must be an object \{"x"'),
        (b'{"x": [1, 2], "y": 1}\nnot json\n', "line 2 is not JSON"),
        (b'{"x": [[1, 2]], "y": 1}\n{"x": [[1]], "y": 0}\n', "lists of numbers of one shape"),
    ],
)
def test_bad_json_lines_are_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_arrays(path)


def test_pickles_and_non_archives_are_refused(tmp_path):
    pickled = _npz(tmp_path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="holds pickled objects; refusing"):
        read_npz(pickled)
    text = tmp_path / "text.npz"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=r"is not an npz \(zip\) archive"):
        read_npz(text)
    with pytest.raises(DataError, match="does not exist"):
        read_npz(tmp_path / "none.npz")
