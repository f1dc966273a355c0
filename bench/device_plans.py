"""Framing plans of `--decode device` labeling: CPU time per picture size, this code against a copy of another.

    python bench/device_plans.py [--sizes 500] [--against OLD_device_preset.py] [--threads 1]

A model actor builds one plan per stored picture size and orientation it meets (`device_preset._make_plan`),
on its CPU, and keeps the last 512. A bucket of photos of many sizes builds one for nearly every
picture, so this CPU time caps the pictures per second of one actor. Without --against only this
code is timed.
"""

import argparse
import importlib.util
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.imaging import gpu_eval as device_preset  # noqa: E402


def sizes(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Stored (height, width, orientation) as the GPU benchmark's photos: mostly 300-1,000 px, 2 % of 12 MP."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        h, w = (3000, 4000) if rng.random() < 0.02 else (rng.randint(300, 1000), rng.randint(300, 1000))
        out.append((h, w, rng.choice([1, 1, 1, 1, 6, 8, 3])))
    return out


def ms_per_plan(module, shapes, geometry: str, size: int = 299) -> float:
    resize = round(size * 342 / 299)
    start = time.process_time()
    for h, w, o in shapes:
        module._make_plan(h, w, o, size, resize, geometry)
    return 1000 * (time.process_time() - start) / len(shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, default=500)
    parser.add_argument("--against", help="another device_preset.py (e.g. from `git show REV:cgi2real/device_preset.py`)")
    parser.add_argument("--threads", type=int, help="torch threads (a GPU model actor has 1); default torch's")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    shapes = sizes(args.sizes)
    other = None
    if args.against:
        spec = importlib.util.spec_from_file_location("other_device_preset", args.against)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
    for geometry in ("crop", "pad"):
        mine = ms_per_plan(device_preset, shapes, geometry)
        line = f"{geometry}: {mine:.3f} ms CPU per plan"
        if other:
            theirs = ms_per_plan(other, shapes, geometry)
            line += f"; --against: {theirs:.3f} ms; ratio {theirs / mine:.1f}x"
        print(line)


if __name__ == "__main__":
    main()
