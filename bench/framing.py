"""Framing on the model's device (`--decode device`): a batch framed picture by picture against the
same batch framed in groups of one stored size and orientation (`DevicePreset.frame`), in one run.

    python bench/framing.py [--gpu] [--batch 256] [--image-size 299]

Framing does not depend on what the pictures show, so they are random decoded pixels, already on
the device; the plans (one per stored size) are built before the clock starts. Three batches:
one camera's size, four sizes both ways up, and every picture a size of its own (no groups: the
worst case, which should cost what it did).
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.imaging.gpu_eval import DevicePreset  # noqa: E402
from cgi2real.imaging.presets import EvalPreset  # noqa: E402


def batches(n: int, rng: np.random.Generator) -> dict[str, list[tuple[int, int, int]]]:
    """(height, width, orientation) of each picture, per batch kind."""
    cameras = [(768, 1024), (480, 640), (600, 800), (1080, 1920)]
    return {
        "one size (768 x 1024)": [(768, 1024, 1)] * n,
        "four sizes, two orientations": [(*cameras[k % 4], 1 + 5 * (k // 4 % 2)) for k in range(n)],
        "every picture its own size": [(int(rng.integers(300, 1000)), int(rng.integers(300, 1000)), 1) for _ in range(n)],
    }


def rate(step, device: torch.device, n: int, seconds: float = 2.0) -> float:
    """Pictures per second of `step()` (one batch of `n`), after one warm-up call."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, done = time.perf_counter(), 0
    while not done or time.perf_counter() - start < seconds:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        done += n
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--framed-values", type=int, default=None, help="stored values framed per launch (default: the device's, gpu_eval.FRAMED_VALUES)")
    args = parser.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    where = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    framing = DevicePreset(EvalPreset(args.image_size), device)
    if args.framed_values is not None:
        framing.framed_values = args.framed_values
    print(f"framing to {args.image_size} px (crop), batches of {args.batch}, {where}, up to {framing.framed_values} stored values per launch")
    for name, shapes in batches(args.batch, np.random.default_rng(0)).items():
        pictures = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, device=device) for h, w, _ in shapes]
        orientations = [o for *_, o in shapes]
        alone = rate(lambda: [framing.frame([p], [o]) for p, o in zip(pictures, orientations)], device, len(pictures))
        grouped = rate(lambda: framing.frame(pictures, orientations), device, len(pictures))
        print(f"{name}: picture by picture {alone:.0f} img/s, in groups {grouped:.0f} img/s ({grouped / alone:.2f}x)")


if __name__ == "__main__":
    main()
