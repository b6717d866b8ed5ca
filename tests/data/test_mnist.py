import gzip
import os
import struct

import numpy as np
import pytest

from zoo.data import load_mnist, read_idx

RNG = np.random.default_rng(0)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_mnist(n_train: int = 7, n_test: int = 3):
    return {
        "train_images": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }


NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def write_idx_dir(directory, arrays, *, gz=False, dotted=False):
    for key, array in arrays.items():
        name = NAMES[key]
        if dotted:
            name = name[::-1].replace("-", ".", 1)[::-1]
        data = idx_bytes(array)
        path = os.path.join(directory, name + (".gz" if gz else ""))
        with (gzip.open if gz else open)(path, "wb") as f:
            f.write(data)
    return directory


@pytest.mark.parametrize("gz, dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_idx_directory_round_trip(tmp_path, gz, dotted):
    arrays = tiny_mnist(n_train=10)
    dataset = load_mnist(write_idx_dir(tmp_path, arrays, gz=gz, dotted=dotted), validation=0.2)
    assert dataset.input_shape == (28, 28, 1)
    assert (len(dataset.train.x), len(dataset.validation.x), len(dataset.test.x)) == (8, 2, 3)
    np.testing.assert_allclose(dataset.test.x[..., 0], arrays["test_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(dataset.test.y, arrays["test_labels"])
    assert dataset.train.x.dtype == np.float32 and dataset.train.y.dtype == np.int32
    # Train + validation is a permutation of the original training set.
    joined = np.concatenate([dataset.train.y, dataset.validation.y])
    np.testing.assert_array_equal(np.sort(joined), np.sort(arrays["train_labels"]))


def test_npz_round_trip(tmp_path):
    arrays = tiny_mnist()
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=arrays["train_images"],
        y_train=arrays["train_labels"],
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
    )
    dataset = load_mnist(path, validation=0.0)
    np.testing.assert_allclose(dataset.test.x[..., 0], arrays["test_images"] / 255.0, rtol=1e-6)
    assert len(dataset.train.x) == 7 and len(dataset.validation.x) == 0


@pytest.mark.parametrize(
    "type_code, dtype", [(0x08, np.uint8), (0x0C, np.int32), (0x0D, np.float32)]
)
def test_read_idx_types(tmp_path, type_code, dtype):
    array = (RNG.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(array, type_code))
    np.testing.assert_array_equal(read_idx(str(path)), array)


def test_bad_magic_names_the_file(tmp_path):
    path = write_idx_dir(tmp_path, tiny_mnist())
    bad = os.path.join(path, NAMES["train_labels"])
    with open(bad, "r+b") as f:
        f.write(b"\x12\x34")
    with pytest.raises(ValueError, match=f"{bad} is not an IDX file: bad magic"):
        load_mnist(path)


def test_truncated_file_names_the_file(tmp_path):
    path = write_idx_dir(tmp_path, tiny_mnist())
    bad = os.path.join(path, NAMES["test_images"])
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) - 100)
    with pytest.raises(ValueError, match=f"{bad} is truncated"):
        load_mnist(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = write_idx_dir(tmp_path, tiny_mnist(), gz=True)
    bad = os.path.join(path, NAMES["train_images"] + ".gz")
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    with pytest.raises(ValueError, match=f"cannot read IDX file {bad}"):
        load_mnist(path)


def test_count_mismatch_names_both_files(tmp_path):
    arrays = tiny_mnist()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    path = write_idx_dir(tmp_path, arrays)
    with pytest.raises(ValueError, match="has 7 images but .*train-labels-idx1-ubyte has 6 labels"):
        load_mnist(path)


def test_labels_out_of_range(tmp_path):
    arrays = tiny_mnist()
    arrays["test_labels"][0] = 11
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        load_mnist(write_idx_dir(tmp_path, arrays))


def test_missing_idx_file(tmp_path):
    path = write_idx_dir(tmp_path, tiny_mnist())
    os.remove(os.path.join(path, NAMES["test_labels"]))
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte"):
        load_mnist(path)


def test_npz_missing_keys(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"lacks arrays \['x_test', 'y_test', 'y_train'\]"):
        load_mnist(path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "mnist.npz"
    objects = np.array([{"a": 1}, None], dtype=object)
    np.savez(path, x_train=objects, y_train=objects, x_test=objects, y_test=objects)
    with pytest.raises(ValueError, match="holds pickled objects; refusing"):
        load_mnist(path)


def test_not_a_zip_file(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"definitely not a zip archive")
    with pytest.raises(ValueError, match="mnist.npz"):
        load_mnist(path)


@pytest.mark.parametrize(
    "content",
    [b"x_train,y_train\n1,2\n", b"", b"\x93NUMPY not an npz"],
    ids=["text", "empty", "npy"],
)
def test_a_file_that_is_no_npz_is_not_called_pickled(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"x\.npz is not an npz \(zip\) archive") as error:
        load_mnist(path)
    assert "pickle" not in str(error.value)


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="neither an .npz file nor a directory"):
        load_mnist("/nonexistent/mnist.npz")
