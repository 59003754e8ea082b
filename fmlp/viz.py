"""Pictures of a run: training curves and the confusion matrix, as PNG files (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend state, no display


def training_curves(
    history: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *, metric: str
) -> list[Path]:
    """Write ``loss.png`` (train and validation loss) and ``<metric>.png`` per epoch.

    Args:
      history: one metrics dict per epoch, as in ``metrics.jsonl``.
      out_dir: folder for the PNG files.
      metric: ``accuracy`` or ``mse``; plotted from the ``val_<metric>`` entries.

    Returns:
      The paths written.
    """
    out_dir = Path(out_dir)
    epochs = [m["epoch"] for m in history]
    paths = []
    for name, series in [
        ("loss", {"train": "train_loss", "validation": "val_loss"}),
        (metric, {"validation": f"val_{metric}"}),
    ]:
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for label, key in series.items():
            values = [m.get(key) for m in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], "o-", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"{name}.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


def confusion_matrix(
    matrix: np.ndarray, path: str | os.PathLike[str], *, labels: Sequence[str] | None = None
) -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted class) as a PNG."""
    matrix = np.asarray(matrix)
    k = matrix.shape[0]
    labels = list(labels) if labels is not None else [str(i) for i in range(k)]
    fig = Figure(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
