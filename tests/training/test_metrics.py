import jax
import numpy as np
import pytest

from zoo.training import metrics


def random_predictions(seed: int, n: int = 200, k: int = 5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    return labels, predictions


def numpy_macro_f1(labels, predictions, k):
    scores = []
    for c in range(k):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return np.mean(scores)


@pytest.mark.parametrize("seed", range(3))
def test_confusion_and_f1_match_numpy_formulas(seed):
    labels, predictions = random_predictions(seed)
    confusion = np.asarray(metrics.confusion_matrix(labels, predictions, 5))
    expected = np.zeros((5, 5), int)
    np.add.at(expected, (labels, predictions), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert float(metrics.accuracy(labels, predictions)) == pytest.approx(
        np.mean(labels == predictions)
    )
    assert float(metrics.macro_f1(labels, predictions, 5)) == pytest.approx(
        numpy_macro_f1(labels, predictions, 5), rel=1e-6
    )


def test_matches_scikit_learn_including_absent_classes():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels, predictions = random_predictions(7, k=4)  # class 4..6 of 7 never appear
    for fn, ours in [
        (
            lambda: sklearn_metrics.f1_score(labels, predictions, average="macro"),
            metrics.macro_f1(labels, predictions, 7),
        ),
        (
            lambda: sklearn_metrics.accuracy_score(labels, predictions),
            metrics.accuracy(labels, predictions),
        ),
    ]:
        assert float(ours) == pytest.approx(fn(), rel=1e-6)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(labels, predictions, 4),
        sklearn_metrics.confusion_matrix(labels, predictions, labels=range(4)),
    )


def test_mask_excludes_padding_rows_and_jit_agrees():
    labels, predictions = random_predictions(1, n=50)
    mask = np.arange(50) < 30
    masked = metrics.confusion_matrix(labels, predictions, 5, mask)
    np.testing.assert_array_equal(
        masked, metrics.confusion_matrix(labels[:30], predictions[:30], 5)
    )
    jitted = jax.jit(metrics.macro_f1, static_argnums=2)(labels, predictions, 5, mask)
    assert float(jitted) == pytest.approx(float(metrics.macro_f1(labels[:30], predictions[:30], 5)))
    assert float(metrics.accuracy(labels, predictions, mask)) == pytest.approx(
        np.mean(labels[:30] == predictions[:30])
    )


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"must both be \(N,\)"):
        metrics.confusion_matrix(np.zeros(3, int), np.zeros(4, int), 2)


def test_majority_tag_accuracy_counts_valid_steps_only():
    from zoo.data import Split

    train = Split(np.zeros((2, 4)), np.array([[1, 1, 0, 0], [1, 0, 0, 0]]), np.array([3, 2]))
    test = Split(np.zeros((2, 4)), np.array([[1, 0, 1, 1], [0, 1, 1, 1]]), np.array([4, 1]))
    # Valid training tags 1, 1, 0, 1, 0: the majority is 1; valid test tags 1, 0, 1, 1, 0.
    assert metrics.majority_tag_accuracy(train, test) == pytest.approx(3 / 5)
    unpadded = Split(np.zeros((1, 3)), np.array([[0, 0, 1]]))
    assert metrics.majority_tag_accuracy(unpadded, test) == pytest.approx(2 / 5)
