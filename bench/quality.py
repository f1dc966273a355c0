"""Model quality from scratch: the CGI -> real recipe, one ablation step at a time, in one run.

    python bench/quality.py [--variants A,B,...,final] [--work DIR] [--publish docs/quality]
    python bench/quality.py --variants F --epochs 8 --synth DIR --tag NAME   # the same recipe on other renders

Every variant trains Inception v3 from random weights (`--weights none`, the whole network, AdamW
with a cosine schedule) for the same number of image-steps, then is evaluated on the shared
evaluation sets: `horse_or_human/validation` (CGI, white backgrounds), `cgi2real_seed/val`
(photorealistic generated images) and `cgi2real_seed/test_real` (real photographs). Each variant
adds one thing to the one before it, so each row of the table measures one choice. The last run,
"final", trains the CLI's default recipe (the one the ablation chose) for longer.

The rendered training images go to WORK/synth-<size>px (made once, by `cgi2real.synth`), or come
from `--synth DIR` (renders made by another version of the renderer, to compare renderers at equal
compute); packages and reports to WORK/<variant>[-tag]/. `real_dev/val` (real photos) is
evaluated too, with its balanced accuracy: the number the renderer's changes are judged by. A variant whose package exists is not trained again, only evaluated,
so a rerun rebuilds the tables. The tables are printed and written to WORK/results.md.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.core.config import EvalConfig, SynthConfig, TrainConfig  # noqa: E402
from cgi2real.formats.class_folders import scan_labeled_dataset  # noqa: E402
from cgi2real.formats.package import read_model_package  # noqa: E402
from cgi2real.stages import (
    evaluate,
    synth,  # noqa: E402
    train,  # noqa: E402
)

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
HORSE_OR_HUMAN = os.path.join(SHARED, "horse_or_human", "train")
EVAL_SETS = {
    "real_dev/val": os.path.join(SHARED, "real_dev", "val"),
    "horse_or_human/validation": os.path.join(SHARED, "horse_or_human", "validation"),
    "cgi2real_seed/val": os.path.join(SHARED, "cgi2real_seed", "val"),
    "cgi2real_seed/test_real": os.path.join(SHARED, "cgi2real_seed", "test_real"),
}


@dataclass(frozen=True)
class Variant:
    name: str
    what: str  # the one change against the variant before it
    synth_weight: float  # -1: the renders only, else: with horse_or_human
    augment: str
    background_prob: float
    paste_prob: float
    label_smoothing: float
    image_size: int | None = None  # None: --image-size
    epochs: int | None = None  # None: --epochs


# Each variant changes one thing from the one before. Equal compute: every variant draws
# --per-epoch images per epoch; the hybrid ones draw each hoh image once and the rest from renders.
# (horse_or_human alone cannot be a variant: it has no `both` images.)
VARIANTS = [
    Variant("A", "cgi2real renders only, the reference notebook's augmentation", -1.0, "basic", 0.0, 0.0, 0.0),
    Variant("B", "+ horse_or_human/train (hybrid: two roots)", 1.0, "basic", 0.0, 0.0, 0.0),
    Variant("C", "+ photo augmentation (stronger colour, grayscale, blur, noise, JPEG)", 1.0, "real", 0.0, 0.0, 0.0),
    Variant("D", "+ random backgrounds behind masked figures (p 0.5)", 1.0, "real", 0.5, 0.0, 0.0),
    Variant("E", "+ cut-and-paste of figures, horse + human -> both (p 0.25)", 1.0, "real", 0.5, 0.25, 0.0),
    Variant("F", "+ label smoothing 0.1", 1.0, "real", 0.5, 0.25, 0.1),
    Variant("G", "F at 128 px (1.7x the compute per image)", 1.0, "real", 0.5, 0.25, 0.1, image_size=128),
]


def final_variant(args) -> Variant:
    """The CLI's default recipe (chosen from the ablation), trained longer: the headline result."""
    d = TrainConfig(data=(), out="")
    what = f"the defaults, {args.final_epochs} epochs"
    return Variant("final", what, 1.0, d.augment, d.background_prob, d.paste_prob, d.label_smoothing, args.final_image_size, args.final_epochs)


def run_name(v: Variant, args) -> str:
    tag = f"-{args.tag}" if args.tag else ""
    return f"{v.name}{tag}-{v.image_size or args.image_size}px-{v.epochs or args.epochs}ep"


def train_config(v: Variant, args, work: str, synth_root: str, hoh_count: int) -> TrainConfig:
    if v.synth_weight < 0:
        data, weights = (synth_root,), (round(args.per_epoch / (3 * args.per_class), 3),)
    else:
        data, weights = (HORSE_OR_HUMAN, synth_root), (1.0, round((args.per_epoch - hoh_count) / (3 * args.per_class), 3))
    return TrainConfig(
        data=data, data_weights=weights, out=os.path.join(work, run_name(v, args), "package"), val_fraction=0.1,
        weights="none", image_size=v.image_size or args.image_size, epochs_head=0, epochs_finetune=v.epochs or args.epochs,
        unfreeze_from="Conv2d_1a_3x3", lr_finetune=args.lr, batch_size=args.batch_size,
        augment=v.augment, background_prob=v.background_prob, paste_prob=v.paste_prob, label_smoothing=v.label_smoothing,
        storage=os.path.join(work, "runs"), name=run_name(v, args), seed=args.seed,
    )


def train_once(cfg: TrainConfig, title: str) -> float | None:
    """Train `cfg` unless its package exists; the seconds the training took (kept next to the
    package, in train_seconds.json), or None for a package trained before times were kept."""
    timing = os.path.join(os.path.dirname(cfg.out), "train_seconds.json")
    if not os.path.exists(os.path.join(cfg.out, "config.json")):
        print(f"=== {title}", flush=True)
        start = time.perf_counter()
        train.run(cfg)
        with open(timing, "w") as f:
            json.dump(time.perf_counter() - start, f)
    if not os.path.exists(timing):
        return None
    with open(timing) as f:
        return json.load(f)


def recipe_arguments(description: str, work: str) -> argparse.ArgumentParser:
    """The options every from-scratch quality benchmark shares: where it works, the data and the schedule."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", default=os.path.expanduser(f"~/.cache/cgi2real/{work}"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--per-epoch", type=int, default=2100, help="training images drawn per epoch")
    parser.add_argument("--per-class", type=int, default=600, help="rendered images per class")
    parser.add_argument("--render-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synth", help="train on the renders in this folder (made by `cgi2real synth`) instead of rendering WORK/synth-<size>px")
    parser.add_argument("--tag", help="added to the run names (e.g. the renderer the --synth folder came from)")
    return parser


def prepare_work(args) -> tuple[str, str, int, str]:
    """(work folder, rendered training root, horse_or_human/train's size, hardware): renders what is missing."""
    if not os.path.isdir(HORSE_OR_HUMAN):
        sys.exit(f"the shared data is not at {SHARED}; this benchmark needs it")
    work = os.path.abspath(args.work)
    if args.synth:
        synth_root = os.path.abspath(args.synth)
        args.per_class = min(len(os.listdir(os.path.join(synth_root, c))) for c in ("both", "horse", "human"))
    else:
        synth_root = os.path.join(work, f"synth-{args.render_size}px")
        synth.run(SynthConfig(out=synth_root, per_class=args.per_class, size=args.render_size))
    hoh_count = len(scan_labeled_dataset(HORSE_OR_HUMAN, TrainConfig(data=(), out="").classes, require_every_class=False))
    hardware = "GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores ({platform.machine()})"
    return work, synth_root, hoh_count, hardware


def write_results(work: str, results, text: str, publish: str | None) -> None:
    """WORK/results.json and WORK/results.md, the latter also to `publish` if given; then print the table."""
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(text)
    if publish:
        with open(publish, "w") as f:
            f.write(text)
    print(text)


def main() -> None:
    parser = recipe_arguments(__doc__.split("\n")[0], "quality")
    parser.add_argument("--variants", default=",".join([v.name for v in VARIANTS] + ["final"]))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--final-image-size", type=int, default=96)
    parser.add_argument("--final-epochs", type=int, default=30)
    parser.add_argument("--publish", help="copy results.md and the final run's confusion and reliability PNGs here (e.g. docs/quality)")
    args = parser.parse_args()
    work, synth_root, hoh_count, hardware = prepare_work(args)
    names = args.variants.split(",")
    chosen = [v for v in VARIANTS + [final_variant(args)] if v.name in names]
    rows = []
    for v in chosen:
        cfg = train_config(v, args, work, synth_root, hoh_count)
        folder = os.path.join(work, run_name(v, args))
        seconds = train_once(cfg, f"{run_name(v, args)}: {v.what}")
        config, _ = read_model_package(cfg.out)
        result = evaluate.run(EvalConfig(model=cfg.out, data=tuple(EVAL_SETS.values()), out=os.path.join(folder, "report"), abstain_below=0.6))
        reports = dict(zip(EVAL_SETS, result["datasets"].values()))
        rows.append({"variant": asdict(v), "config": asdict(cfg), "reports": reports, "train_seconds": seconds, "best": config["training"]["best"]})
        print(evaluate.format_reports(reports), flush=True)
    text = results_markdown(rows, args, hardware)
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)
    if args.publish and rows:
        os.makedirs(args.publish, exist_ok=True)
        shutil.copyfile(os.path.join(work, "results.md"), os.path.join(args.publish, "results.md"))
        report = os.path.join(work, run_name(chosen[-1], args), "report")
        for name in sorted(os.listdir(report)):
            if name.endswith(".png"):
                shutil.copyfile(os.path.join(report, name), os.path.join(args.publish, name))


def balanced_accuracy(report: dict) -> float:
    """The mean of the per-class recalls (real_dev/val is not balanced: 150 horse, 150 human, 82 both)."""
    recalls = [c["recall"] for c in report["per_class"].values()]
    return sum(recalls) / len(recalls)


def results_markdown(rows: list[dict], args, hardware: str) -> str:
    sets = list(EVAL_SETS)
    lines = [
        f"Hardware: {hardware}. Every run: from scratch (`--weights none`, whole network), {args.per_epoch} images "
        f"per epoch, batch {args.batch_size}, AdamW lr {args.lr:g} with a cosine schedule, best epoch by a 10 % "
        "split of the training roots. Cells: accuracy (images) [ECE].",
        "",
        f"Renders: {os.path.basename(args.synth) if args.synth else 'rendered by this checkout'}, {args.per_class} per class at {args.render_size} px.",
        "",
        "| run | change | size | epochs | " + " | ".join(sets) + " | split val acc | train time |",
        "|---|---|---|---|" + "---|" * len(sets) + "---|---|",
    ]
    for row in rows:
        cells = []
        for name in sets:
            r = row["reports"][name]
            ece = f" [{r['ece']:.2f}]" if "ece" in r else ""
            balanced = f", balanced **{balanced_accuracy(r):.3f}**" if name == "real_dev/val" else ""
            cells.append(f"{r['accuracy']:.3f} ({r['n']}){balanced}{ece}")
        minutes = f"{row['train_seconds'] / 60:.1f} min" if row["train_seconds"] else "-"
        v, cfg = row["variant"], row["config"]
        lines.append(
            f"| {v['name']} | {v['what']} | {cfg['image_size']} | {cfg['epochs_finetune']} | " + " | ".join(cells)
            + f" | {row['best']['val_acc']:.3f} | {minutes} |"
        )
    if rows:
        last = rows[-1]
        lines += ["", f"Abstention, run {last['variant']['name']}: accuracy on the images with a top probability of at least "
                  f"{next(iter(last['reports'].values()))['abstain']['threshold']:g}, and their share (coverage).", "",
                  "| | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        cells = [last["reports"][name]["abstain"] for name in sets]
        lines.append("| accuracy | " + " | ".join("-" if a["accuracy"] is None else f"{a['accuracy']:.3f}" for a in cells) + " |")
        lines.append("| coverage | " + " | ".join(f"{a['coverage']:.3f} ({a['covered']})" for a in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
