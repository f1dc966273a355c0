"""Which geometry turns photographs into square input best: centre crop, pad, or squash?

    python bench/geometry.py [--epochs 8] [--work DIR] [--publish docs/geometry.md]

One model is trained per geometry (the CLI's default recipe from scratch, as `bench/quality.py`
trains it, with `--geometry` set: its random crops are framed the way that geometry frames
photos), and every model is evaluated under every geometry on the photographic sets, where
pictures are not square: `real_dev/val` (real photos), `cgi2real_seed/val` (photorealistic,
mostly 16:9) and `cgi2real_seed/test_real`. The diagonal of each table is a consistent pipeline;
the rest shows how much of a difference is the evaluation's alone. Packages whose folder exists
are not retrained, so a rerun only re-evaluates. Results go to WORK/results.md (and --publish).
"""

import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from quality import SHARED, VARIANTS, prepare_work, recipe_arguments, train_config, train_once, write_results  # noqa: E402

from cgi2real.core.config import (
    GEOMETRIES,  # noqa: E402
    EvalConfig,  # noqa: E402
)
from cgi2real.stages import evaluate  # noqa: E402

PHOTO_SETS = {
    "real_dev/val": os.path.join(SHARED, "real_dev", "val"),
    "cgi2real_seed/val": os.path.join(SHARED, "cgi2real_seed", "val"),
    "cgi2real_seed/test_real": os.path.join(SHARED, "cgi2real_seed", "test_real"),
}


def main() -> None:
    parser = recipe_arguments(__doc__.split("\n")[0], "geometry")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--publish", help="copy results.md here (e.g. docs/geometry.md)")
    args = parser.parse_args()
    work, synth_root, hoh_count, hardware = prepare_work(args)
    recipe = next(v for v in VARIANTS if v.name == "F")  # the CLI's defaults
    results = {}
    for trained_as in GEOMETRIES:
        base = train_config(recipe, args, work, synth_root, hoh_count)
        name = f"{trained_as}-{args.image_size}px-{args.epochs}ep"
        cfg = replace(base, geometry=trained_as, out=os.path.join(work, name, "package"), name=name)
        seconds = train_once(cfg, f"training with --geometry {trained_as}")
        for shown_as in GEOMETRIES:
            result = evaluate.run(EvalConfig(model=cfg.out, data=tuple(PHOTO_SETS.values()), geometry=shown_as))
            results[f"{trained_as}/{shown_as}"] = dict(zip(PHOTO_SETS, result["datasets"].values()))
            print(f"--- trained {trained_as}, evaluated {shown_as}\n" + evaluate.format_reports(results[f"{trained_as}/{shown_as}"]), flush=True)
        results[f"{trained_as}/seconds"] = seconds
    write_results(work, results, results_markdown(results, args, hardware), args.publish)


def results_markdown(results: dict, args, hardware: str) -> str:
    lines = [
        f"Hardware: {hardware}. One model per training geometry: the default recipe from scratch, {args.image_size} px, "
        f"{args.epochs} epochs of {args.per_epoch} images (`horse_or_human/train` + {3 * args.per_class} renders, all square). "
        "Cells: accuracy [recall of `both`], rows: the geometry trained with, columns: the geometry evaluated with.",
    ]
    for name in PHOTO_SETS:
        n = results[f"{GEOMETRIES[0]}/{GEOMETRIES[0]}"][name]["n"]
        lines += ["", f"**{name}** ({n} images)", "", "| trained \\ evaluated | " + " | ".join(GEOMETRIES) + " |", "|---|" + "---|" * len(GEOMETRIES)]
        for trained_as in GEOMETRIES:
            cells = []
            for shown_as in GEOMETRIES:
                r = results[f"{trained_as}/{shown_as}"][name]
                cell = f"{r['accuracy']:.3f} [{r['per_class']['both']['recall']:.2f}]"
                cells.append(f"**{cell}**" if trained_as == shown_as else cell)
            lines.append(f"| {trained_as} | " + " | ".join(cells) + " |")
    diagonal = {g: [results[f"{g}/{g}"][name]["accuracy"] for name in PHOTO_SETS] for g in GEOMETRIES}
    lines += ["", "Consistent pipelines (trained and evaluated alike), accuracy per set and the mean of the three:", "",
              "| geometry | " + " | ".join(PHOTO_SETS) + " | mean |", "|---|" + "---|" * (len(PHOTO_SETS) + 1)]
    for g, accs in diagonal.items():
        lines.append(f"| {g} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {sum(accs) / len(accs):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
