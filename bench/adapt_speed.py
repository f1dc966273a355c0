"""BatchNorm adaptation throughput: `adapt --method bn` streamed vs the bare model, in one run.

    python bench/adapt_speed.py [--generate 3000] [--data DIR] [--image-size 128] [--batch-size 32] [--gpu]

- bare model: forward passes (eval mode, no gradient) over batches decoded up front and held in
  memory, same size and batch: the model-compute ceiling.
- bare statistics pass: `estimate_bn_statistics` over the same in-memory batches (BatchNorm in
  training mode): the adaptation's own compute.
- streamed: `cgi2real.stages.adapt.run(method="bn")` from image files to an adapted package: end to end
  (Ray Data and the model task's start-up included, Ray's own start-up excluded) and from its
  first batch on.

All use the same random-init package (speed does not depend on the weights). Without --data,
`--generate N` JPEGs (320 px renders, as `bench/label.py` makes them) go into a temporary folder.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.core.config import (
    DEFAULT_GEOMETRY,  # noqa: E402
    AdaptConfig,  # noqa: E402
)
from cgi2real.formats.class_folders import scan_image_files  # noqa: E402
from cgi2real.imaging.presets import EvalPreset, normalize  # noqa: E402
from cgi2real.model.inputs import autocast
from cgi2real.model.networks import build_model, package_config, save_model_package  # noqa: E402
from cgi2real.pipelines.batches import decode_for_labeling
from cgi2real.runtime.cluster import start_ray
from cgi2real.stages import adapt  # noqa: E402


def in_memory_batches(pixels: np.ndarray, batch_size: int, device: torch.device) -> list[dict]:
    return [
        {"image": torch.from_numpy(pixels[i:i + batch_size]).to(device), "ok": torch.ones(len(pixels[i:i + batch_size]), dtype=torch.bool, device=device)}
        for i in range(0, len(pixels), batch_size)
    ]


def timed(run, device: torch.device) -> float:
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a folder of images (default: generated)")
    parser.add_argument("--generate", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="cgi2real-bench-adapt-")
    data = args.data
    if not data:
        from generated import replicated_dataset

        data = replicated_dataset(os.path.join(tmp, "images"), max(1, args.generate // 3))
    device = torch.device("cuda" if args.gpu else "cpu")
    model = build_model(len(DEFAULT_CLASSES), args.image_size, "none")
    package = os.path.join(tmp, "pkg")
    save_model_package(model.state_dict(), package_config(model, list(DEFAULT_CLASSES), args.image_size, DEFAULT_GEOMETRY), package)
    files = scan_image_files(data)
    print(f"{len(files)} images in {files.root.uri}, {args.image_size} px, batch {args.batch_size}, "
          f"{torch.cuda.get_device_name() if args.gpu else f'{torch.get_num_threads()} torch threads'}, {os.cpu_count()} cores")

    decoded = decode_for_labeling({"path": np.array(files.paths, object), "size": np.array(files.sizes)}, EvalPreset(args.image_size), files.root.fs)
    assert (decoded["error"] == "").all(), "the benchmark images must all decode"
    batches = in_memory_batches(decoded["image"], args.batch_size, device)
    model = model.to(device).eval()

    def forward():
        with torch.inference_mode(), autocast(device):
            for batch in batches:
                model(normalize(batch["image"], IMAGENET_MEAN, IMAGENET_STD))

    bare = len(files) / timed(forward, device)
    statistics = len(files) / timed(lambda: adapt.estimate_bn_statistics(model, batches, device, IMAGENET_MEAN, IMAGENET_STD), device)

    start_ray(min_cpus=2)
    summary = adapt.run(AdaptConfig(model=package, data=(data,), out=os.path.join(tmp, "adapted"), method="bn", batch_size=args.batch_size, use_gpu=args.gpu))
    assert summary.used == len(files)
    streamed = summary.images_per_second
    steady = (summary.used - args.batch_size) / summary.streaming_seconds
    print(f"bare model forward (pre-decoded, eval): {bare:.1f} img/s")
    print(f"bare statistics pass (pre-decoded, BatchNorm in training mode): {statistics:.1f} img/s")
    print(f"streamed adapt --method bn ({summary.used} images in {summary.seconds:.1f} s): {streamed:.1f} img/s end to end, {steady:.1f} img/s from the first batch")
    print(f"ratio streamed / bare forward = {streamed / bare:.2f} end to end, {steady / bare:.2f} from the first batch")


if __name__ == "__main__":
    main()
