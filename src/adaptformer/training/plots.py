"""The PNGs a person looks at: one run's learning curve, and several runs side by side.

Epochs are counted from 1 on the axes, as the training log counts them (``epoch 1/10``); the
``epoch`` field of ``metrics.jsonl`` is the 0-based index. The selected epoch (the one whose
task file was saved) is marked, since that is the model a user gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_METRICS = ("val_top1", "val_mAP")
_LABELS = {"val_top1": "val top-1", "val_mAP": "val mAP"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    return plt, MaxNLocator


def _metric(history: Sequence[dict[str, Any]]) -> str | None:
    return next((m for m in _METRICS if history and m in history[0]), None)


def plot_learning_curve(
    history: Sequence[dict[str, Any]], path: Path, title: str, best_epoch: int | None
) -> None:
    """Train and validation loss (left axis) and validation accuracy (right axis) per epoch,
    with the selected epoch marked; the legend sits below the axes, never over the data."""
    plt, MaxNLocator = _pyplot()
    epochs = [r["epoch"] + 1 for r in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    if history and "val_loss" in history[0]:
        lines += ax.plot(epochs, [r["val_loss"] for r in history], "^-", color="tab:green",
                         label="val loss")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    metric = _metric(history)
    if metric:
        ax2 = ax.twinx()
        lines += ax2.plot(epochs, [r[metric] for r in history], "s-", color="tab:orange",
                          label=f"{_LABELS[metric]} (%)")  # fmt: skip
        ax2.set_ylabel(f"{_LABELS[metric]} (%)")
    if best_epoch is not None:
        lines.append(ax.axvline(best_epoch + 1, color="grey", linestyle=":",
                                label=f"selected: epoch {best_epoch + 1}"))  # fmt: skip
    fig.legend(handles=lines, loc="lower center", ncol=len(lines), fontsize="small", frameon=False)
    ax.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(runs: Sequence[tuple[str, Sequence[dict[str, Any]], int | None]],
                    path: Path) -> None:  # fmt: skip
    """Validation accuracy (left) and training loss (right) per epoch, one line per run
    (``(name, history, selected epoch)``), the selected epoch of each marked with a star."""
    plt, MaxNLocator = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    metric_names = set()
    for name, history, best in runs:
        epochs = [r["epoch"] + 1 for r in history]
        metric = _metric(history)
        color = loss.plot(epochs, [r["train_loss"] for r in history], "o-", label=name,
                          markersize=3)[0].get_color()  # fmt: skip
        if metric:
            metric_names.add(metric)
            acc.plot(epochs, [r[metric] for r in history], "o-", color=color, label=name,
                     markersize=3)  # fmt: skip
            if best is not None and 0 <= best < len(history):
                acc.plot(best + 1, history[best][metric], "*", color=color, markersize=12)
    acc.set_ylabel(" / ".join(sorted(_LABELS[m] for m in metric_names)) + " (%)"
                   if metric_names else "no validation split")  # fmt: skip
    loss.set_ylabel("train loss")
    acc.set_title("validation (star: selected epoch)")
    loss.set_title("training")
    for ax in (acc, loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize="small",
               frameon=False)  # fmt: skip
    rows = (len(labels) + 3) // 4
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
