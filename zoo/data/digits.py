"""The UCI handwritten digits bundled inside scikit-learn: 1,797 real 8x8 images, 10 classes.

No download: the file ships with scikit-learn (`pip install 'zoo[digits]'`). Pixels (0..16) are
scaled to [0, 1] and, by default, resized to 28x28 so MNIST models run on them unchanged.
"""

import importlib.util
from pathlib import Path

import jax
import numpy as np

from zoo.data.splits import Dataset, split_by_seed


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images `(N, 8, 8)` with pixels 0..16, and their labels `(N,)`.

    Read straight from scikit-learn's `datasets/data/digits.csv.gz` (65 columns: 64 pixels, the
    label), as its `load_digits` reads it, without importing scikit-learn, which takes 4 s of a
    short run (2026-12-01); through `load_digits` where the file is elsewhere.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or spec.origin is None:
        raise ImportError(
            "the digits dataset is bundled with scikit-learn: pip install 'zoo[digits]'"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.images, bunch.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_digits(
    *, seed: int = 0, image_size: int = 28, validation: float = 0.1, test: float = 0.2
) -> Dataset:
    """Loads the digits as `(N, image_size, image_size, 1)` float32 images in [0, 1].

    Args:
      seed: fixes the train/validation/test split.
      image_size: side of the (bilinearly) resized images; 8 keeps the originals.
      validation: the fraction of the 1,797 images held out for validation.
      test: the fraction held out for testing.
    """
    pixels, labels = read_digits()
    images = (pixels / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1)
    if image_size != 8:
        images = resize(images, image_size)
    labels = labels.astype(np.int32)
    train, val, test_split = split_by_seed(
        images, labels, seed=seed, validation=validation, test=test
    )
    return Dataset(train, val, test_split, num_classes=10)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of `(N, H, W, C)` images to `(N, size, size, C)`, clipped to [0, 1]."""
    n, _, _, c = images.shape
    out = jax.image.resize(images, (n, size, size, c), method="linear")
    return np.clip(np.asarray(out), 0.0, 1.0)
