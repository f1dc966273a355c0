"""Evaluation of a model package on labeled datasets: accuracy, per-class P/R/F1, confusion.

Several datasets are reported side by side, so the gap between CGI and real photographs shows at
a glance. Decoding runs on a thread pool (PIL releases the GIL); the forward pass is
`train.evaluate`, the same code that scores validation during training.
"""

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cgi2real.config import EvalConfig
from cgi2real.data import LabeledImages, load_image_batch, scan_labeled_dataset
from cgi2real.errors import InputError
from cgi2real.model import load_model_package
from cgi2real.presets import EvalPreset
from cgi2real.storage import first_line, locate
from cgi2real.train import MaskedCrossEntropy, evaluate


def labeled_batches(images: LabeledImages, preset, batch_size: int):
    """Yield {"image", "label", "ok"} torch batches, decoding `batch_size` files at a time in threads."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(images), batch_size):
            rows = {"path": images.paths[start:start + batch_size], "label": images.labels[start:start + batch_size]}
            batch = load_image_batch(rows, preset, images.root.fs, pool.map)
            yield {key: torch.from_numpy(value) for key, value in batch.items()}


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
    lines.append(f"{'class':18}" + "".join("P / R / F1 (n)".rjust(width) for _ in names))
    for c in classes:
        cells = []
        for r in reports.values():
            m = r["per_class"][c]
            cells.append(f"{m['precision']:.2f} / {m['recall']:.2f} / {m['f1']:.2f} ({m['support']})".rjust(width))
        lines.append(c[:18].ljust(18) + "".join(cells))
    return "\n".join(lines)


def confusion_png(report: dict, title: str) -> bytes:
    """A confusion-matrix picture (rows: true class, columns: predicted), as PNG bytes."""
    classes, matrix = report["classes"], np.asarray(report["confusion"])
    cell, left, top = 80, 110, 90
    k = len(classes)
    font = ImageFont.load_default(size=14)
    width = max(left + cell * k + 20, int(font.getlength(title)) + 20)
    img = Image.new("RGB", (width, top + cell * k + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black", font=font)
    draw.text((10, 28), f"accuracy {report['accuracy']:.3f}, {report['n']} images", fill="black", font=font)
    draw.text((left, top - 22), "predicted", fill="gray", font=font)
    draw.text((10, top - 22), "true", fill="gray", font=font)
    row_totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(k):
        draw.text((10, top + i * cell + cell // 2 - 8), classes[i][:12], fill="black", font=font)
        draw.text((left + i * cell + 8, top + k * cell + 8), classes[i][:10], fill="black", font=font)
        for j in range(k):
            share = matrix[i, j] / row_totals[i, 0]
            shade = int(255 - 200 * share)
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 2, top + (i + 1) * cell - 2]
            draw.rectangle(box, fill=(shade, shade, 255))
            draw.text((box[0] + cell // 2 - 12, box[1] + cell // 2 - 8), str(matrix[i, j]), fill="white" if share > 0.6 else "black", font=font)
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def run(cfg: EvalConfig) -> dict:
    """Evaluate cfg.model on each dataset; write report.json and PNGs to cfg.out if given."""
    if not cfg.data:
        raise InputError("give at least one --data dataset to evaluate")
    package = load_model_package(cfg.model, cfg.s3_endpoint)
    datasets = [scan_labeled_dataset(uri, tuple(package.classes), cfg.s3_endpoint, require_every_class=False) for uri in cfg.data]
    out = locate(cfg.out, cfg.s3_endpoint) if cfg.out else None
    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    if use_gpu and not torch.cuda.is_available():
        raise InputError("--gpu given but no CUDA GPU is visible")
    device = torch.device("cuda" if use_gpu else "cpu")
    model, preset, loss_fn = package.model.to(device), EvalPreset(package.image_size), MaskedCrossEntropy().to(device)
    reports = {}
    for name, images in zip(dataset_names(cfg.data), datasets):
        stats = evaluate(model, loss_fn, labeled_batches(images, preset, cfg.batch_size), device, package.mean, package.std)
        reports[name] = {**classification_report(stats.confusion, package.classes), "errors": stats.bad, "source": images.root.uri}
    result = {"model": package.model_id, "model_path": locate(cfg.model, cfg.s3_endpoint).uri, "datasets": reports}
    if out:
        try:
            out.child("report.json").write_bytes(json.dumps(result, indent=2).encode())
            for name, report in reports.items():
                out.child(f"confusion_{_file_safe(name)}.png").write_bytes(confusion_png(report, name))
        except OSError as e:
            raise InputError(f"cannot write the report to {out.uri}: {first_line(e)}") from None
    return result


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
