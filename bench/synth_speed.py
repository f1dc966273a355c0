"""How fast the renderer draws: images/s on one core at 96, 224 and 299 px, and its framing.

    python bench/synth_speed.py [--per-class 20] [--sizes 96,224,299] [--judges none,imagenet] [--framing 300]

Renders `--per-class` scenes per class in this process (one core: the Ray job runs one such
process per core) at each size, encoded as `cgi2real synth` writes them, and prints images/s; for
each of `--judges` (`synth --judge`: with imagenet, horse and `both` scenes are drawn again until
ImageNet sees a horse, the judge's Lite0 on the same core). With `--framing N` it also renders N scenes
per class at 64 px and prints the share of the image the figures cover (from the masks): the
10th, 50th and 90th percentiles per class. To compare two versions of the renderer, run this
file from both checkouts on the same machine: it measures the `cgi2real` of the checkout it is in.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.stages.synth import judged_rendering  # noqa: E402
from cgi2real.synth.scenes import render_scene  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=20, help="timed renders per class and size")
    parser.add_argument("--sizes", default="96,224,299")
    parser.add_argument("--framing", type=int, default=0, help="also measure figure shares over this many 64 px renders per class")
    parser.add_argument("--first-seed", type=int, default=10_000)
    parser.add_argument("--judges", default="none", help="comma-separated `synth --judge` values to time: none, imagenet")
    args = parser.parse_args()
    judges = args.judges.split(",")
    if "imagenet" in judges:
        import torch

        torch.set_num_threads(1)
    for judge in judges:  # first calls (imports, caches, the judge's network) out of the timing
        judged_rendering("both", 0, 64, judge=judge)
    for size in map(int, args.sizes.split(",")):
        for judge in judges:
            start = time.perf_counter()
            for label in DEFAULT_CLASSES:
                for i in range(args.per_class):
                    judged_rendering(label, args.first_seed + i, size, judge=judge)
            seconds = time.perf_counter() - start
            print(f"{size} px, judge {judge}: {len(DEFAULT_CLASSES) * args.per_class / seconds:.2f} images/s on one core", flush=True)
    if args.framing:
        for label in DEFAULT_CLASSES:
            shares = [np.asarray(render_scene(label, i, 64).mask).mean() / 255 for i in range(args.framing)]
            p10, p50, p90 = np.percentile(shares, [10, 50, 90])
            print(f"{label}: figure share p10 {p10:.3f}, median {p50:.3f}, p90 {p90:.3f} ({args.framing} renders at 64 px)", flush=True)


if __name__ == "__main__":
    main()
