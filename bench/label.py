"""Labeling throughput: the Ray Data pipeline vs the bare model vs a naive per-image loop, in one run.

    python bench/label.py [--data ../shared/data/horse_or_human/train] [--image-size 128] [--batch-size 32]

- pipeline: `cgi2real.label.run` end to end from image files to a committed Parquet table
  (listing, decoding, model actors, writing; Ray start-up excluded, actor start-up included),
  and its rate after the first results arrived (the fixed start-up excluded).
- bare model: `Labeler` (the pipeline's model stage) called in a loop on batches decoded up front
  and held in memory, same size and batch: the model-compute ceiling.
- naive loop: the reference notebook's way: for each file, read, decode, preprocess, predict one
  image (`--naive-images` of them).

All three use the same random-init package (speed does not depend on the weights). Without the
shared data, `--generate N` JPEGs are made into a temporary folder.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.config import LabelConfig  # noqa: E402
from cgi2real.data import decode_for_labeling, scan_image_files  # noqa: E402
from cgi2real.label import CPU_BATCH_SIZE, GPU_BATCH_SIZE, Labeler, run  # noqa: E402
from cgi2real.model import build_model, package_config, read_model_package, save_model_package  # noqa: E402
from cgi2real.presets import DEFAULT_GEOMETRY, EvalPreset  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "horse_or_human", "train")


def bare_model(labeler: Labeler, pixels: np.ndarray, batch_size: int) -> float:
    """img/s of the model stage alone over pre-decoded uint8 batches (one warm-up batch first)."""
    def batch(start: int) -> dict:
        images = pixels[start:start + batch_size]
        return {"path": np.full(len(images), "x", object), "image": images, "error": np.full(len(images), "", object)}

    labeler(batch(0))
    if labeler.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        labeler(batch(i))  # returns numpy: the GPU work is finished when it does
    return len(pixels) / (time.perf_counter() - start)


def naive_loop(labeler: Labeler, paths: list[str], image_size: int) -> float:
    """img/s of read -> decode -> preprocess -> predict, one file at a time."""
    preset = EvalPreset(image_size)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            pixels = preset(f.read()).numpy()[None]
        labeler({"path": np.array([path], object), "image": pixels, "error": np.array([""], object)})
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=SHARED if os.path.isdir(SHARED) else None)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="default: cgi2real label's (256 GPU, 32 CPU)")
    parser.add_argument("--generate", type=int, default=0, help="label N generated 320 px JPEGs instead of --data")
    parser.add_argument("--naive-images", type=int, default=64)
    parser.add_argument("--gpu", action="store_true", help="model on the GPU (bf16) in all three")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="cgi2real-bench-label-")
    data = args.data
    if data is None or args.generate:
        from generated import replicated_dataset

        data = replicated_dataset(os.path.join(tmp, "images"), max(1, args.generate // 3) if args.generate else 350)
    batch_size = args.batch_size or (GPU_BATCH_SIZE if args.gpu else CPU_BATCH_SIZE)
    model = build_model(len(DEFAULT_CLASSES), args.image_size, "none")
    package = os.path.join(tmp, "pkg")
    save_model_package(model.state_dict(), package_config(model, list(DEFAULT_CLASSES), args.image_size, DEFAULT_GEOMETRY), package)

    files = scan_image_files(data)
    where = torch.cuda.get_device_name() if args.gpu else f"{torch.get_num_threads()} torch threads"
    print(f"{len(files)} images in {files.root.uri}, {args.image_size} px, batch {batch_size}, {where}, {os.cpu_count()} cores")

    config, weights = read_model_package(package)
    labeler = Labeler(config, weights, use_gpu=args.gpu)
    decoded = decode_for_labeling({"path": np.array(files.paths, object), "size": np.array(files.sizes)}, EvalPreset(args.image_size), files.root.fs)
    assert (decoded["error"] == "").all(), "the benchmark images must all decode"
    bare = bare_model(labeler, decoded["image"], batch_size)
    naive = naive_loop(labeler, list(files.paths[: args.naive_images]), args.image_size)
    del labeler, decoded

    summary = run(LabelConfig(source=files.root.uri, model=package, out=os.path.join(tmp, "labels"), batch_size=batch_size, use_gpu=args.gpu))
    assert summary.labeled == len(files) and not summary.errors
    pipeline, steady = summary.images_per_second, summary.steady_images_per_second
    assert steady, "too few images to measure the rate after start-up: label more"
    print(f"bare model (pre-decoded, batch {batch_size}): {bare:.1f} img/s")
    print(f"naive loop (one image at a time, {args.naive_images} images): {naive:.1f} img/s")
    print(f"pipeline (files -> Parquet, {summary.labeled} images in {summary.seconds:.1f} s): {pipeline:.1f} img/s")
    print(f"  first results after {summary.first_seconds:.1f} s ({summary.first_rows} rows), then {steady:.1f} img/s")
    print(f"ratio pipeline / bare model = {pipeline / bare:.2f} end to end, {steady / bare:.2f} after start-up")
    print(f"speed-up over the naive loop = {pipeline / naive:.1f}x end to end, {steady / naive:.1f}x after start-up")


if __name__ == "__main__":
    main()
