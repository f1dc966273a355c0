"""The pictures of reports, drawn with matplotlib's object API and its Agg canvas (no display,
no pyplot state, safe in threads): confusion matrices and reliability diagrams for `evaluate`,
confidence histograms for `review`. Each function returns PNG bytes.
"""

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
BLUE, RED, GRAY = "#3b5bdb", "#e03131", "#adb5bd"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def confusion_png(report: dict, title: str) -> bytes:
    """A confusion matrix (rows: true class, columns: predicted), cells shaded by the share of their row."""
    classes, matrix = report["classes"], np.asarray(report["confusion"])
    k = len(classes)
    shares = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    fig = Figure(figsize=(1.2 * k + 2.2, 1.2 * k + 1.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center", color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\naccuracy {report['accuracy']:.3f}, {report['n']} images", fontsize="medium")
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    return _png(fig)


def reliability_png(report: dict, title: str) -> bytes:
    """A reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration,
    with the number of images per bin below it."""
    bins = report["calibration"]
    lows = np.array([b["low"] for b in bins])
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    fig = Figure(figsize=(4.8, 5.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    accuracy = [b["accuracy"] if b["n"] else 0.0 for b in bins]
    top.bar(lows, accuracy, width=width, align="edge", color=BLUE, edgecolor="white", label="accuracy in the bin")
    top.plot([0, 1], [0, 1], color=RED, linestyle="--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"{title}\nECE {report['ece']:.3f}, {report['n']} images", fontsize="medium")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(lows, [b["n"] for b in bins], width=width, align="edge", color=GRAY, edgecolor="white")
    bottom.set(xlabel="confidence (top-class probability)", ylabel="images")
    return _png(fig)


def confidence_histograms_png(confidences: dict[str, np.ndarray], bins: int = 20) -> bytes:
    """One histogram of confidence per class, side by side on a shared confidence axis."""
    names = list(confidences)
    fig = Figure(figsize=(3.2 * max(len(names), 1) + 0.6, 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(names), 1), sharex=True, squeeze=False)[0])
    edges = np.linspace(0, 1, bins + 1)
    for ax, name in zip(axes, names):
        values = np.asarray(confidences[name], dtype=np.float64)
        ax.hist(values, bins=edges, color=BLUE, edgecolor="white")
        ax.set_title(f"{name} ({len(values)} images)", fontsize="medium")
        ax.set(xlim=(0, 1), xlabel="confidence")
    axes[0].set_ylabel("images")
    return _png(fig)
