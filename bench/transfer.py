"""Model quality with pretrained backbones: `cgi2real train` on CGI only, measured on real photos.

    python bench/transfer.py [--runs NAME,NAME,...] [--seeds 0,1] [--render-seed 0[,1,...]] [--judge none|imagenet] [--work DIR]
                             [--publish docs/transfer.md]

Every run trains with `cgi2real.stages.train.run` (Ray Train, the CLI's code) on CGI-only roots from
../shared/data and renders of `cgi2real synth`, then `cgi2real.stages.evaluate.run` measures it on
`real_dev/val` (382 real photos: balanced accuracy and per-class recall, the number to beat),
`horse_or_human/validation` (CGI on white) and `cgi2real_seed/test_real` (14 real photos). Each
run is repeated for every seed (the validation split, the initialization and the shuffles), and
the table gives the mean and the spread (half the range). A run whose package exists is only
evaluated again, so a rerun rebuilds the table; results go to WORK/results.json and .md.

`cgi2real_seed/val` is CGI and trains here (the only `both` CGI besides the renders): it is in no
metric column. real_dev is never trained on.
"""

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from quality import train_once  # noqa: E402

from cgi2real.core.archs import ARCHS  # noqa: E402
from cgi2real.core.config import EvalConfig, SynthConfig, TrainConfig  # noqa: E402
from cgi2real.formats.package import read_model_package  # noqa: E402
from cgi2real.stages import (
    evaluate,  # noqa: E402
    synth,  # noqa: E402
)

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
ROOTS = {
    "hoh": os.path.join(SHARED, "horse_or_human", "train"),
    "seed": os.path.join(SHARED, "cgi2real_seed", "val"),
    "renders": None,  # WORK/renders-<size>px[-seed<N>] per render seed, rendered by this checkout (`--scenes photo`, with masks)
}
EVAL_SETS = {
    "real_dev/val": os.path.join(SHARED, "real_dev", "val"),
    "horse_or_human/validation": os.path.join(SHARED, "horse_or_human", "validation"),
    "cgi2real_seed/test_real": os.path.join(SHARED, "cgi2real_seed", "test_real"),
}


@dataclass(frozen=True)
class Run:
    name: str
    what: str
    arch: str
    data: tuple[str, ...]  # keys of ROOTS
    recipe: dict = field(default_factory=dict)  # TrainConfig settings other than the arch's defaults


PLAIN = {"augment": "light", "background_prob": 0.0, "paste_prob": 0.0}  # the Lite default: crops and flips only
PHOTO = {"augment": "real", "background_prob": 0.5, "paste_prob": 0.25}  # the Inception recipe: photo-like jitter, random backgrounds, pasting
FT6 = {"epochs_finetune": 2, "unfreeze_from": "blocks.6", "lr_finetune": 1e-5}  # after the head: the last block at 1e-5
PLAIN_FT6_BN = {**PLAIN, **FT6, "freeze_bn": True}  # the best renders-only recipe: PLAIN, then FT6 with every BatchNorm statistic kept
RUNS = [
    # The Lite default (archs.Arch: the head on the frozen backbone, 4 epochs, class weights ** 0.5, PLAIN) on each
    # training set, then one change at a time. Every recipe is spelled out, so a row stays reproducible when a default moves.
    Run("lite0-light", "Lite0, the default recipe", "efficientnet_lite0", ("hoh", "seed"), PLAIN),
    Run("lite0-renders-plain", "Lite0, renders only, the default recipe", "efficientnet_lite0", ("renders",), PLAIN),
    Run("lite0-all-plain", "Lite0, hoh + seed + renders, the default recipe", "efficientnet_lite0", ("hoh", "seed", "renders"), PLAIN),
    Run("lite0", "Lite0, photo-like jitter, random backgrounds 0.5, pasting 0.25 (`--augment real`)", "efficientnet_lite0", ("hoh", "seed"), PHOTO),
    Run("lite0-inverse", "Lite0, as `lite0` with inverse-frequency class weights (--class-weight-power 1)", "efficientnet_lite0", ("hoh", "seed"),
        {**PHOTO, "class_weight_power": 1.0}),
    Run("lite0-ft6", "Lite0, as `lite0` + 2 epochs fine-tuning blocks.6 on at 1e-5, their BatchNorm statistics trained too", "efficientnet_lite0",
        ("hoh", "seed"), {**PHOTO, **FT6, "freeze_bn": False}),
    Run("lite0-ft6-bn", "Lite0, as `lite0` + 2 epochs fine-tuning blocks.6 on at 1e-5, every BatchNorm statistic kept (`--freeze-bn`)",
        "efficientnet_lite0", ("hoh", "seed"), {**PHOTO, **FT6, "freeze_bn": True}),
    Run("lite0-renders", "Lite0, renders only, as `lite0`", "efficientnet_lite0", ("renders",), PHOTO),
    Run("lite0-all", "Lite0, hoh + seed + renders, as `lite0`", "efficientnet_lite0", ("hoh", "seed", "renders"), PHOTO),
    Run("lite0-all-ft6-bn", "Lite0, hoh + seed + renders, as `lite0-ft6-bn`", "efficientnet_lite0", ("hoh", "seed", "renders"),
        {**PHOTO, **FT6, "freeze_bn": True}),
    Run("lite0-renders-plain-ft6-bn", "Lite0, renders only, the default recipe + 2 epochs fine-tuning blocks.6 on at 1e-5 (`--freeze-bn`)",
        "efficientnet_lite0", ("renders",), PLAIN_FT6_BN),
    Run("lite0-renders-paste-ft6-bn", "Lite0, renders only, as `lite0-renders-plain-ft6-bn` with the other class's figure pasted into a quarter of "
        "the horse and human renders (-> both)", "efficientnet_lite0", ("renders",), {**PLAIN_FT6_BN, "paste_prob": 0.25}),
    Run("lite0-all-plain-ft6-bn", "Lite0, hoh + seed + renders, as `lite0-renders-plain-ft6-bn`", "efficientnet_lite0", ("hoh", "seed", "renders"),
        PLAIN_FT6_BN),
    Run("lite2", "Lite2 (260 px), the default recipe", "efficientnet_lite2", ("hoh", "seed"), PLAIN),
    Run("lite2-all", "Lite2 (260 px), hoh + seed + renders, the default recipe", "efficientnet_lite2", ("hoh", "seed", "renders"), PLAIN),
]


def train_config(run: Run, seed: int, args, work: str) -> TrainConfig:
    """The run's training settings. With several render seeds, each seed's renders are a root drawn
    1/n times per epoch: as many renders per epoch as one seed gives, from n times as many."""
    size = ARCHS[run.arch].image_size
    data, weights = [], []
    for key in run.data:
        roots = [ROOTS[key]] if ROOTS[key] else [render_root(work, size, render_seed, args.per_class, args.judge) for render_seed in args.render_seed]
        data += roots
        weights += [1 / len(roots)] * len(roots)
    return TrainConfig(
        data=tuple(data), data_weights=tuple(weights), out=os.path.join(work, f"{run.name}-s{seed}", "package"), arch=run.arch,
        val_fraction=0.1, batch_size=args.batch_size, storage=os.path.join(work, "runs"), name=f"{run.name}-s{seed}", seed=seed,
        **run.recipe,
    )


def render_root(work: str, size: int, render_seed: int, per_class: int, judge: str = "none") -> str:
    root = os.path.join(work, f"renders-{size}px" + (f"-seed{render_seed}" if render_seed else "") + ("" if judge == "none" else f"-{judge}"))
    synth.run(SynthConfig(out=root, per_class=per_class, size=size, seed=render_seed, judge=judge))  # renders only what is missing
    return root


def balanced(report: dict) -> tuple[float, list[float]]:
    """(mean recall over the classes present, recall per class): real_dev/val has 82 both, 150 horse, 150 human."""
    recalls = [c["recall"] for c in report["per_class"].values() if c["support"]]
    return sum(recalls) / len(recalls), [c["recall"] for c in report["per_class"].values()]


def measure(run: Run, seed: int, args, work: str) -> dict:
    cfg = train_config(run, seed, args, work)
    folder = os.path.dirname(cfg.out)
    seconds = train_once(cfg, f"{run.name}, seed {seed}: {run.what}")
    config, _ = read_model_package(cfg.out)
    result = evaluate.run(EvalConfig(model=cfg.out, data=tuple(EVAL_SETS.values()), out=os.path.join(folder, "report")))
    reports = dict(zip(EVAL_SETS, result["datasets"].values()))
    print(evaluate.format_reports(reports), flush=True)
    training = config["training"]["config"]
    return {"run": run.name, "seed": seed, "reports": reports, "train_seconds": seconds, "best": config["training"]["best"],
            "recipe": {k: training[k] for k in ("arch", "image_size", "epochs_head", "epochs_finetune", "unfreeze_from", "lr_head", "lr_finetune", "augment")}}


def spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else f"{mean:.3f}"


def results_markdown(rows: list[dict], hardware: str, seeds: list[int]) -> str:
    lines = [
        f"Hardware: {hardware}. Every run: `cgi2real train` (Ray Train, 1 worker), ImageNet weights, the arch's input size, "
        f"batch 32, the best epoch by a 10 % split of the training roots; mean ± half the range over seeds {', '.join(map(str, seeds))}.",
        "",
        "| run | what | real_dev/val balanced | recall both / horse / human | horse_or_human/validation | test_real | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in RUNS:
        mine = [r for r in rows if r["run"] == run.name]
        if not mine:
            continue
        bal = [balanced(r["reports"]["real_dev/val"]) for r in mine]
        recalls = [sum(b[1][c] for b in bal) / len(bal) for c in range(3)]
        lines.append(
            f"| {run.name} | {run.what} | **{spread([b[0] for b in bal])}** | {' / '.join(f'{x:.2f}' for x in recalls)} "
            f"| {spread([r['reports']['horse_or_human/validation']['accuracy'] for r in mine])} "
            f"| {spread([r['reports']['cgi2real_seed/test_real']['accuracy'] for r in mine])} "
            f"| {sum(r['train_seconds'] for r in mine) / len(mine) / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def seed_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2] (argparse reports a ValueError as a bad value)."""
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(r.name for r in RUNS))
    parser.add_argument("--seeds", type=seed_list, default="0,1")
    parser.add_argument("--work", default=os.path.expanduser("~/.cache/cgi2real/transfer"))
    parser.add_argument("--per-class", type=int, default=300, help="renders per class (for runs on renders)")
    parser.add_argument("--render-seed", type=seed_list, default="0", help="the renders' seed (`cgi2real synth --seed`), or several (0,1,2: "
                        "one root per seed, each drawn 1/n times per epoch); use one WORK per choice")
    parser.add_argument("--judge", default="none", help="the renders' `cgi2real synth --judge` (imagenet: the horse and both scenes ImageNet "
                        "sees a horse in); use one WORK per choice")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--publish", help="also write the table here (e.g. docs/transfer.md)")
    args = parser.parse_args()
    if not os.path.isdir(EVAL_SETS["real_dev/val"]):
        sys.exit(f"the shared data is not at {SHARED}; this benchmark needs it")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    by_name = {r.name: r for r in RUNS}
    unknown = set(args.runs.split(",")) - set(by_name)
    if unknown:
        sys.exit(f"unknown runs {', '.join(sorted(unknown))}; choose from {', '.join(by_name)}")
    chosen = [by_name[name] for name in args.runs.split(",")]  # in the order given
    import torch

    hardware = "GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores ({platform.machine()})"
    results_file = os.path.join(work, "results.json")
    rows = json.load(open(results_file)) if os.path.exists(results_file) else []
    for run in chosen:
        for seed in args.seeds:
            rows = [r for r in rows if (r["run"], r["seed"]) != (run.name, seed)] + [measure(run, seed, args, work)]
            with open(results_file, "w") as f:
                json.dump(rows, f, indent=1)
    text = results_markdown(rows, hardware, args.seeds)
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(text)
    if args.publish:
        with open(args.publish, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
