"""Evaluation of a model package on labeled datasets: accuracy, per-class P/R/F1, confusion,
calibration (expected calibration error, reliability diagram) and abstention.

Several datasets are reported side by side, so the gap between CGI and real photographs shows at
a glance. Decoding runs on a thread pool (PIL releases the GIL); the forward pass is plain torch
with the training code's input path (`runtime.model_input`, `runtime.autocast`).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cgi2real.core.config import EvalConfig
from cgi2real.core.errors import InputError, RunFailed
from cgi2real.formats.class_folders import LabeledImages
from cgi2real.formats.plots import confusion_png, reliability_png
from cgi2real.imaging.presets import EvalPreset
from cgi2real.model.inputs import forward
from cgi2real.model.networks import load_model_package, num_outputs
from cgi2real.pipelines.batches import load_image_batch
from cgi2real.plans.evaluate import REPORT_FILE, EvalPlan, plan
from cgi2real.runtime.progress import Progress
from cgi2real.storage.locations import first_line, locate

CALIBRATION_BINS = 10  # equal-width confidence bins for ECE and the reliability diagram


def labeled_batches(images: LabeledImages, preset, batch_size: int, progress: Progress | None = None):
    """Yield {"image", "label", "ok"} torch batches, decoding `batch_size` files at a time in threads
    (each counted in `progress`)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(images), batch_size):
            rows = {"path": images.paths[start:start + batch_size], "label": images.labels[start:start + batch_size]}
            batch = load_image_batch(rows, preset, [images.root.fs], pool.map)
            if batch["unavailable"].any():
                raise RunFailed(
                    f"{int(batch['unavailable'].sum())} images of {images.root.uri} could not be read through every retry "
                    f"(throttling, 5xx, resets or timeouts): an accuracy without them would be off; rerun the same command"
                )
            if progress is not None:
                progress.advance(len(rows["path"]))
            yield {key: torch.from_numpy(value) for key, value in batch.items()}


@torch.no_grad()
def predict(model: torch.nn.Module, batches, device: torch.device, mean, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities float32 (N, K), labels (N,), ok (N,)) of `model` in eval mode over `batches`."""
    model.eval()
    probs, labels, ok = [], [], []
    for batch in batches:
        logits, y, mask = forward(model, batch, device, mean, std)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(y.cpu().numpy())
        ok.append(mask.cpu().numpy())
    k = num_outputs(model)
    join = lambda parts, empty: np.concatenate(parts) if parts else empty  # noqa: E731
    return join(probs, np.zeros((0, k), np.float32)), join(labels, np.zeros(0, np.int64)), join(ok, np.zeros(0, bool))


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts, rows true class, columns the predicted (top) class."""
    return np.bincount(labels * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k) if len(labels) else np.zeros((k, k), np.int64)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error and its bins: how far the top-class confidence is from the accuracy.

    ECE = sum over equal-width confidence bins of (share of images) x |accuracy - mean confidence|.
    """
    confidence, correct = probs.max(axis=1, initial=0.0), probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        row = {"low": b / bins, "high": (b + 1) / bins, "n": n, "confidence": None, "accuracy": None}
        if n:
            row["confidence"], row["accuracy"] = float(confidence[members].mean()), float(correct[members].mean())
            ece += n / len(labels) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return {"ece": float(ece), "bins": table}


def abstention(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Accuracy on the images whose top probability is >= `threshold`, and their share (coverage)."""
    covered = probs.max(axis=1, initial=0.0) >= threshold
    n = int(covered.sum())
    accuracy = float((probs[covered].argmax(axis=1) == labels[covered]).mean()) if n else None
    return {"threshold": threshold, "covered": n, "coverage": n / len(labels) if len(labels) else 0.0, "accuracy": accuracy}


def classification_report(confusion: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true class)."""
    confusion = np.asarray(confusion)
    true_counts, predicted_counts, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    per_class = {}
    for i, name in enumerate(classes):
        precision = hits[i] / predicted_counts[i] if predicted_counts[i] else 0.0
        recall = hits[i] / true_counts[i] if true_counts[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(true_counts[i])}
    n = int(confusion.sum())
    return {
        "accuracy": float(hits.sum() / n) if n else 0.0,
        "per_class": per_class,
        "confusion": confusion.astype(int).tolist(),
        "classes": list(classes),
        "n": n,
    }


def dataset_names(uris: tuple[str, ...]) -> list[str]:
    """Short, unique display names: the last two path parts (e.g. cgi2real_seed/val)."""
    names = []
    for uri in uris:
        parts = [p for p in uri.replace("s3://", "").split("/") if p]
        name = "/".join(parts[-2:]) or uri
        while name in names:
            name += "'"
        names.append(name)
    return names


def format_reports(reports: dict[str, dict]) -> str:
    """The datasets side by side: accuracy, n, then P/R/F1 (support) per class."""
    names = list(reports)
    classes = next(iter(reports.values()))["classes"]
    width = max(22, *(len(n) + 2 for n in names))
    lines = ["".ljust(18) + "".join(n.rjust(width) for n in names)]
    lines.append("accuracy".ljust(18) + "".join(f"{r['accuracy']:.3f}".rjust(width) for r in reports.values()))
    lines.append("images".ljust(18) + "".join(f"{r['n']}".rjust(width) for r in reports.values()))
    if any(r.get("errors") for r in reports.values()):
        lines.append("undecodable".ljust(18) + "".join(f"{r.get('errors', 0)}".rjust(width) for r in reports.values()))
    if all("ece" in r for r in reports.values()):
        lines.append("ECE".ljust(18) + "".join(f"{r['ece']:.3f}".rjust(width) for r in reports.values()))
    if all(r.get("abstain") for r in reports.values()):
        threshold = next(iter(reports.values()))["abstain"]["threshold"]
        cells = [r["abstain"] for r in reports.values()]
        lines.append(f"acc @ conf>={threshold:g}"[:18].ljust(18) + "".join(("-" if a["accuracy"] is None else f"{a['accuracy']:.3f}").rjust(width) for a in cells))
        lines.append("coverage".ljust(18) + "".join(f"{a['coverage']:.3f} ({a['covered']})".rjust(width) for a in cells))
    lines.append(f"{'class':18}" + "".join("P / R / F1 (n)".rjust(width) for _ in names))
    for c in classes:
        cells = []
        for r in reports.values():
            m = r["per_class"][c]
            cells.append(f"{m['precision']:.2f} / {m['recall']:.2f} / {m['f1']:.2f} ({m['support']})".rjust(width))
        lines.append(c[:18].ljust(18) + "".join(cells))
    return "\n".join(lines)


def run(cfg: EvalConfig, checked: EvalPlan | None = None) -> dict:
    """Evaluate cfg.model on each dataset; write report.json and PNGs to cfg.out if given.

    `checked` is `plans.evaluate.plan(cfg)` when the caller has made it already.
    """
    checked = checked or plan(cfg)
    datasets, out = checked.datasets, checked.out
    package = load_model_package(cfg.model, cfg.s3_endpoint)
    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    if use_gpu and not torch.cuda.is_available():
        raise InputError("--gpu given but no CUDA GPU is visible")
    device = torch.device("cuda" if use_gpu else "cpu")
    geometry = checked.geometry
    model, preset = package.model.to(device), EvalPreset(package.image_size, geometry)
    reports = {}
    with Progress("evaluating", sum(len(images) for images in datasets)) as progress:
        predictions = [predict(model, labeled_batches(images, preset, cfg.batch_size, progress), device, package.mean, package.std) for images in datasets]
    for name, images, (probs, labels, ok) in zip(dataset_names(cfg.data), datasets, predictions):
        probs, labels = probs[ok], labels[ok]
        confusion = confusion_matrix(probs, labels, len(package.classes))
        fit = calibration(probs, labels)
        report = {**classification_report(confusion, package.classes), "errors": int((~ok).sum()), "ece": fit["ece"], "calibration": fit["bins"]}
        if cfg.abstain_below is not None:
            report["abstain"] = abstention(probs, labels, cfg.abstain_below)
        reports[name] = {**report, "source": images.root.uri}
    result = {"model": package.model_id, "model_path": locate(cfg.model, cfg.s3_endpoint).uri, "geometry": geometry, "datasets": reports}
    if out:
        try:
            out.child(REPORT_FILE).write_bytes(json.dumps(result, indent=2).encode())
            for name, report in reports.items():
                out.child(f"confusion_{_file_safe(name)}.png").write_bytes(confusion_png(report, name))
                out.child(f"reliability_{_file_safe(name)}.png").write_bytes(reliability_png(report, name))
        except OSError as e:
            raise InputError(f"cannot write the report to {out.uri}: {first_line(e)}") from None
    return result


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
