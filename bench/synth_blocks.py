"""How many renders a Ray Data task should hold: the synth job's images/s with blocks of 4 and 16.

    python bench/synth_blocks.py [--per-class 200] [--size 80] [--scenes simple]

Renders the same images twice on one local Ray instance, into two temporary folders, once with
the old block size (4 images per task) and once with the current one (synth.dataset.RENDERS_PER_BLOCK),
alternating in that order after an untimed warm-up job, and prints images/s and their ratio.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.core.config import SynthConfig  # noqa: E402
from cgi2real.runtime.cluster import start_ray  # noqa: E402
from cgi2real.stages import synth as dataset  # noqa: E402


def render(out: str, per_class: int, size: int, scenes: str, block: int) -> float:
    dataset.RENDERS_PER_BLOCK = block
    start = time.perf_counter()
    counts = dataset.run(SynthConfig(out=out, per_class=per_class, size=size, masks=True, scenes=scenes))
    return counts["written"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--scenes", default="simple")
    args = parser.parse_args()
    current = dataset.RENDERS_PER_BLOCK
    start_ray(min_cpus=1)
    with tempfile.TemporaryDirectory(prefix="cgi2real-bench-") as tmp:
        render(os.path.join(tmp, "warm"), 8, args.size, args.scenes, current)  # worker start-up, imports
        rates = {block: render(os.path.join(tmp, f"b{block}"), args.per_class, args.size, args.scenes, block) for block in (4, current)}
    for block, rate in rates.items():
        print(f"blocks of {block:2} images: {rate:5.1f} img/s ({3 * args.per_class} images at {args.size} px, {args.scenes})")
    print(f"ratio {current} / 4: {rates[current] / rates[4]:.2f}")


if __name__ == "__main__":
    main()
