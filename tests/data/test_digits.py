import numpy as np
import pytest

pytest.importorskip("sklearn")

from zoo.data import load_digits  # noqa: E402
from zoo.data.digits import read_digits  # noqa: E402


def test_the_file_read_directly_is_scikit_learns_dataset(monkeypatch):
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images, labels = read_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)
    # Where the file is not where scikit-learn keeps it today, its loader reads it.
    monkeypatch.setattr("pathlib.Path.is_file", lambda path: False)
    fallback_images, fallback_labels = read_digits()
    np.testing.assert_array_equal(fallback_images, bunch.images)
    np.testing.assert_array_equal(fallback_labels, bunch.target)


def test_loading_the_digits_does_not_import_scikit_learn():
    """It takes 4 s of every short `train.py` run."""
    import subprocess
    import sys

    code = "import sys, zoo.data; zoo.data.load_digits(); print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_digits_shapes_ranges_and_splits():
    dataset = load_digits(seed=0)
    assert dataset.input_shape == (28, 28, 1) and dataset.num_classes == 10
    sizes = [len(s.x) for s in (dataset.train, dataset.validation, dataset.test)]
    assert sum(sizes) == 1797 and sizes == [1258, 180, 359]
    for split in dataset:
        if hasattr(split, "x"):
            assert split.x.dtype == np.float32 and split.y.dtype == np.int32
            assert 0.0 <= split.x.min() and split.x.max() <= 1.0
    assert set(np.unique(dataset.train.y)) == set(range(10))


def test_split_is_deterministic_by_seed_and_disjoint():
    a, b, c = (
        load_digits(seed=1, image_size=8),
        load_digits(seed=1, image_size=8),
        load_digits(seed=2, image_size=8),
    )
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)
    from sklearn.datasets import load_digits as sklearn_digits

    originals = sklearn_digits().images / 16.0
    # At 8x8 the images are the originals, and the splits partition them.
    rows = {img.tobytes() for img in originals.astype(np.float32)}
    seen = [img[..., 0].tobytes() for s in (a.train, a.validation, a.test) for img in s.x]
    assert len(seen) == 1797 and set(seen) <= rows


def test_resized_image_keeps_the_digit():
    small, large = load_digits(seed=0, image_size=8), load_digits(seed=0, image_size=28)
    np.testing.assert_array_equal(small.test.y, large.test.y)
    # Average-pooling the 28x28 image back to 7x7 correlates strongly with the 8x8 original.
    down = large.test.x[:, :28, :28, 0].reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4))
    corr = np.corrcoef(
        down.reshape(len(down), -1)[:, :].ravel(),
        small.test.x[:, :7, :7, 0].reshape(len(down), -1).ravel(),
    )[0, 1]
    assert corr > 0.5
