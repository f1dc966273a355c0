"""The renderer judged by ImageNet features: what renders alone teach about real photographs.

    python bench/renders.py [--per-class 300] [--seeds 0,1] [--size 224] [--arch efficientnet_lite0]
                            [--workers 2] [--work DIR] [--name LABEL] [--judge none|imagenet] [--save-features]
                            [--keep | --renders DIR,DIR]

For each render seed, `--per-class` images per class are rendered at the backbone's size (the
`cgi2real synth` files: `--scenes photo`, JPEG quality 92, the same seeds), framed by the project's
eval preset, and passed through the frozen ImageNet backbone as the project builds it
(`cgi2real.model.networks.build_model(..., "imagenet", arch)`, pooled features before the classifier). A linear
head (scikit-learn's logistic regression on standardized features, L2 with C = 1, classes weighted
to balance: `fit_probe`, as `../shared/tools/pretrained_probe.py` fits it; `pip install scikit-learn`) is fitted on them and measured on `real_dev/val` (382 real photos, never
trained on): balanced accuracy, recall per class and the confusion. The same head is also fitted
on horse_or_human/train + cgi2real_seed/val (the other CGI) without and with the renders: renders
must add to it, not subtract.

Next to the linear head, two diagnostics that are not the judge: the nearest renders vote
(`fit_neighbours`: k = the square root of the number of renders, on the same standardized
features), to tell what the renders carry from what a linear head draws out of them; and whether
ImageNet sees a horse (`HorseJudge.horse_seen`, the judge of `synth --judge imagenet`: the
backbone's own ImageNet classifier on the same features, P(sorrel) + P(horse cart), its mean per
class of renders next to the photos'), which varies little from seed to seed. The features are the
judge's (`HorseJudge.features`).

Figures are the mean over the render seeds with the spread (half the range). Each run appends one
JSON line to WORK/results.jsonl (named by `--name`) and prints a Markdown row for the ablation table
in the README. Features of the fixed image sets are cached in WORK (keyed by arch, size and the
file list); renders are redrawn every run (the renderer is what changes), in `--workers` processes.
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.core.archs import get_arch  # noqa: E402
from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.core.config import DEFAULT_GEOMETRY  # noqa: E402
from cgi2real.model.judge import HorseJudge  # noqa: E402
from cgi2real.stages.synth import image_seed, judged_rendering  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
REAL = os.path.join(SHARED, "real_dev", "val")
OTHER_CGI = [os.path.join(SHARED, "horse_or_human", "train"), os.path.join(SHARED, "cgi2real_seed", "val")]
CLASSES = list(DEFAULT_CLASSES)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def class_files(root: str) -> list[tuple[str, int]]:
    """(path, class index) of every image under root/<class>/, classes in CLASSES order (a root may lack one)."""
    items = []
    for index, name in enumerate(CLASSES):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            items += [(os.path.join(folder, f), index) for f in sorted(os.listdir(folder)) if f.lower().endswith(EXTENSIONS)]
    return items


def _render(job: tuple[str, int, int, int, str]) -> bytes:
    label, seed, index, size, judge = job
    return judged_rendering(label, image_seed(seed, index), size, judge=judge)[1]


def render_set(seed: int, per_class: int, size: int, workers: int, judge: str = "none") -> tuple[list[bytes], np.ndarray]:
    """The JPEG bytes of `per_class` renders per class (the files `cgi2real synth --seed --judge` writes) and their classes."""
    jobs = [(label, seed, i, size, judge) for label in CLASSES for i in range(per_class)]
    # Spawned, one torch thread each: this process has run torch, and the judge runs torch in the workers.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        images = list(pool.map(_render, jobs, chunksize=8))
    return images, np.repeat(np.arange(len(CLASSES)), per_class)


def horse_by_class(seen: np.ndarray, y: np.ndarray) -> dict:
    """Mean P(ImageNet's horse classes) per class (NaN for a class the images lack)."""
    return {c: float(seen[y == k].mean()) if (y == k).any() else float("nan") for k, c in enumerate(CLASSES)}


def cached_features(backbone: HorseJudge, items: list[tuple[str, int]], tag: str, work: str) -> tuple[np.ndarray, np.ndarray]:
    key = hashlib.sha1((tag + "|" + "|".join(p for p, _ in items)).encode()).hexdigest()[:16]
    path = os.path.join(work, f"features-{key}.npz")
    if os.path.exists(path):
        cached = np.load(path)
        return cached["x"], cached["y"]
    x = backbone.features([open(p, "rb").read() for p, _ in items])
    y = np.array([c for _, c in items])
    np.savez(path, x=x, y=y)
    return x, y


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0):
    """A linear head: logistic regression on standardized features, classes weighted n / (k n_c),
    L2 with C = 1 (scikit-learn's, as in ../shared/tools/pretrained_probe.py). Returns predict(x)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, class_weight="balanced")).fit(x, y).predict


def fit_neighbours(x: np.ndarray, y: np.ndarray, k: int = 0):
    """The k nearest training images vote (k = 0: the square root of their number), by cosine
    similarity of the features standardized as `fit_probe` standardizes them, each vote weighted
    n / (classes n_c) like its balanced class weights. A diagnostic next to the linear head, not
    the judge. Returns predict(x)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)

    def unit(features: np.ndarray) -> np.ndarray:
        standard = scaler.transform(features)
        return standard / np.linalg.norm(standard, axis=1, keepdims=True)

    train, k = unit(x), k or round(len(x) ** 0.5)
    weight = len(y) / (len(CLASSES) * np.bincount(y, minlength=len(CLASSES)).clip(1))

    def predict(queries: np.ndarray) -> np.ndarray:
        nearest = np.argpartition(-(unit(queries) @ train.T), k - 1, axis=1)[:, :k]
        return np.stack([(y[nearest] == c).sum(1) * weight[c] for c in range(len(CLASSES))], 1).argmax(1)

    return predict


def scores(y: np.ndarray, predicted: np.ndarray) -> dict:
    confusion = np.zeros((len(CLASSES), len(CLASSES)), int)
    np.add.at(confusion, (y, predicted), 1)
    recall = confusion.diagonal() / confusion.sum(1).clip(1)
    return {"balanced": float(recall.mean()), "recall": dict(zip(CLASSES, map(float, recall))), "confusion": confusion.tolist()}


def recalls(recall: dict, digits: int = 2) -> str:
    """Recall (or any figure) per class as "both / horse / human"."""
    return " / ".join(f"{recall[c]:.{digits}f}" for c in CLASSES)


def summary(runs: list[dict]) -> dict:
    """Mean and spread (half the range) of the balanced accuracy and of each recall over seeds."""
    def stat(values):
        return {"mean": float(np.mean(values)), "spread": float(np.ptp(values) / 2)}

    return {"balanced": stat([r["balanced"] for r in runs]), "recall": {c: stat([r["recall"][c] for r in runs]) for c in CLASSES}}


def row(name: str, result: dict) -> str:
    def cell(s):
        return f"{s['balanced']['mean']:.3f} ± {s['balanced']['spread']:.3f}"

    def mean_recalls(s):
        return recalls({c: r["mean"] for c, r in s["recall"].items()})

    only, added = result["renders_only"], result["with_other_cgi"]
    near = result["nearest_renders"]
    return (f"| {name} | {cell(only)} | {mean_recalls(only)} | {cell(added)} | {result['without_renders']['balanced']:.3f} | {result['images_per_s'] or 0:.1f} "
            f"| {cell(near)} ({mean_recalls(near)}) | {recalls(result['horse_seen']['renders'], 3)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=0, help="render and feature size (default: the arch's own)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--work", default="/tmp/cgi2real-renders-bench")
    parser.add_argument("--name", default="this checkout", help="the row's name in the ablation table")
    parser.add_argument("--judge", default="none", help="render as `cgi2real synth --judge` does (imagenet: horse and both scenes drawn again "
                                                         "until ImageNet sees a horse in them)")
    parser.add_argument("--keep", action="store_true", help="also write each seed's renders under WORK/renders-<seed>/<class>/")
    parser.add_argument("--save-features", action="store_true", help="also write each seed's render features to WORK/features-renders-<seed>.npz (x, y)")
    parser.add_argument("--renders", help="judge these class folders (comma-separated, one per seed: `cgi2real synth` outputs, "
                                          "or a --keep run's) instead of rendering")
    args = parser.parse_args()
    if not os.path.isdir(REAL):
        sys.exit(f"error: {REAL} is missing (../shared/data: see its README)")
    size = args.size or get_arch(args.arch).image_size
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 2)
    backbone = HorseJudge(args.arch, size)
    tag = f"{args.arch}|{size}|{DEFAULT_GEOMETRY}"
    real_x, real_y = cached_features(backbone, class_files(REAL), tag, args.work)
    other = [cached_features(backbone, class_files(root), tag, args.work) for root in OTHER_CGI]
    other_x, other_y = np.concatenate([x for x, _ in other]), np.concatenate([y for _, y in other])
    without = scores(real_y, fit_probe(other_x, other_y)(real_x))
    photos_horse = horse_by_class(backbone.horse_seen(real_x), real_y)
    only, added, near, horse, seconds = [], [], [], [], 0.0
    sets = args.renders.split(",") if args.renders else list(map(int, args.seeds.split(",")))
    for seed in sets:
        start = time.perf_counter()
        if args.renders:
            items = class_files(seed)
            images, y = [open(p, "rb").read() for p, _ in items], np.array([c for _, c in items])
        else:
            images, y = render_set(seed, args.per_class, size, args.workers, args.judge)
        seconds += time.perf_counter() - start
        if args.keep:
            for k, (data, label) in enumerate(zip(images, y)):
                path = os.path.join(args.work, f"renders-{seed}", CLASSES[label], f"{k:06d}.jpg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "wb").write(data)
        x = backbone.features(images)
        if args.save_features:
            np.savez(os.path.join(args.work, f"features-renders-{seed}.npz"), x=x, y=y)
        only.append(scores(real_y, fit_probe(x, y)(real_x)))
        added.append(scores(real_y, fit_probe(np.concatenate([x, other_x]), np.concatenate([y, other_y]))(real_x)))
        near.append(scores(real_y, fit_neighbours(x, y)(real_x)))
        horse.append(horse_by_class(backbone.horse_seen(x), y))
        print(f"seed {seed}: renders only {only[-1]['balanced']:.3f} (recall {recalls(only[-1]['recall'])}), "
              f"with the other CGI {added[-1]['balanced']:.3f}; confusion (rows true {', '.join(CLASSES)}) {only[-1]['confusion']}; "
              f"nearest renders instead of the linear head {near[-1]['balanced']:.3f} (recall {recalls(near[-1]['recall'])}); "
              f"ImageNet sees a horse {recalls(horse[-1], 3)} (photos {recalls(photos_horse, 3)})", flush=True)
    renders = len(only) * len(y)
    result = {
        "name": args.name, "arch": args.arch, "size": size, "per_class": args.per_class, "seeds": args.seeds, "judge": args.judge,
        "renders_only": summary(only), "with_other_cgi": summary(added), "without_renders": without, "nearest_renders": summary(near),
        "horse_seen": {"renders": {c: float(np.mean([h[c] for h in horse])) for c in CLASSES}, "photos": photos_horse},
        "per_seed": {"renders_only": only, "with_other_cgi": added, "nearest_renders": near, "horse_seen": horse},
        "images_per_s": None if args.renders else renders / seconds, "renders": args.renders, "workers": args.workers, "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
    }
    with open(os.path.join(args.work, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    print("| renderer | renders only: balanced | recall both / horse / human | + other CGI: balanced | other CGI alone | renders/s | nearest renders (recall) | ImageNet sees a horse |")
    print(row(args.name, result))


if __name__ == "__main__":
    main()
