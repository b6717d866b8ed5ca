"""`--plot`: training curves, the test confusion matrix, an autoencoder's reconstructions and
samples, and a seq2seq model's attention as PNG files (needs matplotlib)."""

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


def image_grid(images: np.ndarray, columns: int, gap: int = 1, fill: float = 0.5) -> np.ndarray:
    """`(N, H, W, C)` images tiled row by row, `columns` per row, with `gap` pixels of `fill`
    between them and around the edge, and the last row's missing images `fill` too:
    `(rows * (H + gap) + gap, columns * (W + gap) + gap, C)`."""
    n, height, width, channels = images.shape
    rows = -(-n // columns)
    shape = (rows * (height + gap) + gap, columns * (width + gap) + gap, channels)
    grid = np.full(shape, fill, images.dtype)
    for index, image in enumerate(images):
        top = gap + (index // columns) * (height + gap)
        left = gap + (index % columns) * (width + gap)
        grid[top : top + height, left : left + width] = image
    return grid


def _show_grid(grid: np.ndarray, title: str, path: str) -> None:
    plt = _pyplot()
    height, width = grid.shape[:2]
    fig, ax = plt.subplots(figsize=(max(2.0, width / 28), max(2.0, height / 28 + 0.4)))
    pixels = np.clip(grid, 0.0, 1.0)
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reconstructions(
    inputs: np.ndarray, reconstructions: np.ndarray, path: str, columns: int = 8
) -> None:
    """Rows of `columns` inputs `(N, H, W, C)` in [0, 1], each row above the row of their
    reconstructions."""
    pairs = []
    for start in range(0, len(inputs), columns):
        row = slice(start, start + columns)
        blank = np.full((columns - len(inputs[row]), *inputs.shape[1:]), 0.5, inputs.dtype)
        pairs += [inputs[row], blank, reconstructions[row].astype(inputs.dtype), blank]
    grid = image_grid(np.concatenate(pairs), columns)
    _show_grid(grid, "test inputs (odd rows) and reconstructions (even rows)", path)


def plot_samples(samples: np.ndarray, path: str) -> None:
    """Images `(N, H, W, C)` in [0, 1] decoded from a model's prior, in a square-ish grid."""
    columns = int(np.ceil(np.sqrt(len(samples))))
    _show_grid(image_grid(samples, columns), "samples from the prior", path)


def plot_attention(
    weights: Sequence[np.ndarray],
    sources: Sequence[Sequence[str]],
    outputs: Sequence[Sequence[str]],
    path: str,
) -> None:
    """One heat map per example of a decoder's attention weights `(outputs, sources)`: a row
    per output token, a column per source token, each row summing to 1."""
    plt = _pyplot()
    count = len(weights)
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.2), squeeze=False)
    for ax, grid, source, output in zip(axes[0], weights, sources, outputs, strict=True):
        ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(source)), source)
        ax.set_yticks(range(len(output)), output, fontsize=8)
        ax.set_xlabel("source")
    axes[0][0].set_ylabel("decoded")
    fig.suptitle("attention of the greedy decoder (test examples)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
