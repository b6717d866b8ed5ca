"""`--plot`: training curves and the test confusion matrix as PNG files (needs matplotlib)."""

from collections.abc import Sequence
from typing import Any

import numpy as np


def require_matplotlib() -> None:
    """Fails before training, not after it, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install -e '.[plot]'") from error


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str, best_epoch: int = 0) -> None:
    """Loss and (where reported) accuracy per epoch, train vs validation, in one PNG."""
    plt = _pyplot()
    metrics = [m for m in ("loss", "accuracy") if f"train_{m}" in history[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    epochs = [record["epoch"] for record in history]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if key in history[0]:
                label = "train" if split == "train" else "validation"
                ax.plot(epochs, [record[key] for record in history], marker=".", label=label)
        if best_epoch:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], path: str) -> None:
    """The confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    classes = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * classes, 0.8 + 0.45 * classes))
    ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > threshold else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
