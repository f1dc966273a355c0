"""Adaptation to real photos, one step at a time, in one run: source model, bn, SHOT, self-training.

    python bench/adapt.py [--work DIR] [--source PKG] [--publish docs/adapt.md]

1. source: the CLI's default recipe from scratch (as `bench/quality.py` trains it: 96 px,
   `horse_or_human/train` + renders), or `--source PKG`.
2. bn: BatchNorm statistics of `real_dev/pool` (unlabeled), for each `--bn-mixes` share.
3. shot: SHOT on `real_dev/pool`, with the diversity term aimed at uniform class shares (SHOT's)
   and at the shares estimated from the source model's predictions.
4. self-training: the model of `--self-train-from` (chosen up front) labels `real_dev/pool`; the source recipe continues from
   that model for `--self-train-epochs` on its CGI data plus the confident rows.
5. transductive: SHOT on `real_dev/val`'s own images, their labels unread (the case of labeling a bucket).

Every model is evaluated on `real_dev/val` (accuracy, balanced accuracy, recall per class),
`cgi2real_seed/test_real`, `cgi2real_seed/val` and `horse_or_human/validation` (what adapting costs
on CGI). Labels of the evaluation sets are used for scoring only; adaptation reads image files.
Packages that exist are not made again, so a rerun only re-evaluates. Results go to WORK/results.md.
"""

import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from quality import SHARED, VARIANTS, prepare_work, recipe_arguments, train_config, write_results  # noqa: E402

from cgi2real.core.config import AdaptConfig, EvalConfig, LabelConfig  # noqa: E402
from cgi2real.stages import (
    adapt,
    evaluate,
    label,
    train,  # noqa: E402
)

POOL = os.path.join(SHARED, "real_dev", "pool")
REAL_VAL = os.path.join(SHARED, "real_dev", "val")
EVAL_SETS = {
    "real_dev/val": REAL_VAL,
    "cgi2real_seed/test_real": os.path.join(SHARED, "cgi2real_seed", "test_real"),
    "cgi2real_seed/val": os.path.join(SHARED, "cgi2real_seed", "val"),
    "horse_or_human/validation": os.path.join(SHARED, "horse_or_human", "validation"),
}


def made(package: str) -> bool:
    return os.path.exists(os.path.join(package, "config.json"))


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = recipe_arguments(__doc__.split("\n")[0], "adapt")
    parser.add_argument("--source", help="an existing source package (default: train one)")
    parser.add_argument("--epochs", type=int, default=8, help="source training epochs")
    parser.add_argument("--bn-mixes", default="1,0.5,0.3")
    parser.add_argument("--shot-epochs", type=int, default=4)
    parser.add_argument("--shot-lr", type=float, default=1e-4)
    parser.add_argument("--self-train-from", default="bn-0.5", help="the step whose model labels the pool for self-training")
    parser.add_argument("--self-train-epochs", type=int, default=3)
    parser.add_argument("--min-confidence", type=float, default=0.6, help="(these from-scratch models are rarely more confident on photos)")
    parser.add_argument("--publish", help="copy results.md here (e.g. docs/adapt.md)")
    args = parser.parse_args()
    work, synth_root, hoh_count, hardware = prepare_work(args)
    runs = os.path.join(work, "runs")
    rows = []
    timings = os.path.join(work, "adapt-seconds.json")  # kept across reruns, which only make what is missing
    seconds = json.load(open(timings)) if os.path.exists(timings) else {}

    source = args.source
    if not source:
        recipe = train_config(next(v for v in VARIANTS if v.name == "F"), args, work, synth_root, hoh_count)
        source = os.path.join(work, "source")
        cfg = replace(recipe, out=source, epochs_finetune=args.epochs, name=f"source-{args.epochs}ep")
        if not made(source):
            seconds["source"] = timed(lambda: train.run(cfg))
    rows.append(("source", "the source model: default recipe from scratch, no adaptation", source))

    def adapted(name: str, what: str, data: str, **settings) -> str:
        out = os.path.join(work, name)
        if not made(out):
            cfg = AdaptConfig(model=settings.pop("model", source), data=(data,), out=out, storage=runs, name=name, **settings)
            seconds[name] = timed(lambda: adapt.run(cfg))
        rows.append((name, what, out))
        return out

    for mix in (float(m) for m in args.bn_mixes.split(",")):
        adapted(f"bn-{mix:g}", f"bn on real_dev/pool, --bn-mix {mix:g}", POOL, method="bn", bn_mix=mix)
    shot = dict(method="shot", epochs=args.shot_epochs, lr=args.shot_lr)
    adapted("shot-uniform", f"shot on real_dev/pool, {args.shot_epochs} epochs, uniform prior (SHOT's)", POOL, **shot, prior="uniform")
    adapted("shot-estimated", f"shot on real_dev/pool, {args.shot_epochs} epochs, estimated prior", POOL, **shot, prior="estimated")

    # Self-training starts from a step chosen up front (--self-train-from), not from the one that
    # scores best on real_dev/val: that would be using the evaluation labels to choose.
    start_name, _, start_package = next(r for r in rows if r[0] == args.self_train_from)
    self_trained = os.path.join(work, "self-trained")
    if not made(self_trained):
        table = os.path.join(work, "pool-labels")
        label.run(LabelConfig(source=POOL, model=start_package, out=table, overwrite=True))
        recipe = train_config(next(v for v in VARIANTS if v.name == "F"), args, work, synth_root, hoh_count)
        cfg = replace(recipe, out=self_trained, weights=start_package, epochs_finetune=args.self_train_epochs, lr_finetune=args.lr / 3,
                      name="self-trained", pseudo_labels=table, min_confidence=args.min_confidence)
        seconds["self-trained"] = timed(lambda: train.run(cfg))
    rows.append(("self-trained", f"{start_name} + {args.self_train_epochs} epochs (lr {args.lr / 3:.1g}) on the CGI data and its `real_dev/pool` "
                 f"labels of confidence >= {args.min_confidence:g}", self_trained))
    adapted("shot-transductive", f"shot on real_dev/val's own images (labels unread), {args.shot_epochs} epochs, uniform prior", REAL_VAL, **shot, prior="uniform")
    scores = {name: evaluate_package(package) for name, _, package in rows}

    with open(timings, "w") as f:
        json.dump(seconds, f)
    text = results_markdown(rows, scores, seconds, args, hardware, source)
    write_results(work, {"rows": rows, "scores": scores, "seconds": seconds}, text, args.publish)


def evaluate_package(package: str) -> dict:
    result = evaluate.run(EvalConfig(model=package, data=tuple(EVAL_SETS.values())))
    scores = {}
    for name, report in zip(EVAL_SETS, result["datasets"].values()):
        recalls = {c: m["recall"] for c, m in report["per_class"].items() if m["support"]}
        scores[name] = {"accuracy": report["accuracy"], "balanced": sum(recalls.values()) / len(recalls), "recall": recalls, "n": report["n"]}
    return scores


def results_markdown(rows, scores, seconds, args, hardware, source) -> str:
    real = "real_dev/val"
    others = [name for name in EVAL_SETS if name != real]
    lines = [
        f"Hardware: {hardware}. Source model: {source} (from scratch, {args.image_size} px). Adaptation reads image files only; "
        "evaluation labels are used for scoring. Cells: accuracy, and for real_dev/val also balanced accuracy and recall per class.",
        "",
        f"| step | what | {real} acc | balanced | recall both / horse / human | " + " | ".join(others) + " | time |",
        "|---|---|---|---|---|" + "---|" * len(others) + "---|",
    ]
    for name, what, _ in rows:
        s = scores[name]
        r = s[real]["recall"]
        minutes = f"{seconds[name] / 60:.1f} min" if name in seconds else "-"
        lines.append(
            f"| {name} | {what} | {s[real]['accuracy']:.3f} | **{s[real]['balanced']:.3f}** | {r['both']:.2f} / {r['horse']:.2f} / {r['human']:.2f} | "
            + " | ".join(f"{s[o]['accuracy']:.3f} ({s[o]['n']})" for o in others) + f" | {minutes} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
