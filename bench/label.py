"""Labeling throughput: the Ray Data pipeline vs the bare model vs a naive per-image loop, in one run.

    python bench/label.py [--data ../shared/data/horse_or_human/train] [--arch inception_v3 efficientnet_lite0] [--image-size S] [--batch-size 32]
    python bench/label.py --gpu --photos 50000 --image-size 299 --decode cpu device --actors 1 2

- pipeline: `cgi2real.stages.label.run` end to end from image files to a committed Parquet table
  (listing, reading, model actors, writing; Ray start-up excluded, actor start-up included),
  and its rate after the first results arrived (the fixed start-up excluded). One run per
  `--decode` mode (and, on a GPU, per `--actors` count).
- bare model: `Labeler` (the pipeline's model stage) called in a loop on batches decoded up front
  and held in memory, same size and batch: the model-compute ceiling.
- naive loop: the reference notebook's way: for each file, read, decode, preprocess, predict one
  image (`--naive-images` of them).
- reading stage: each mode's CPU stage (`decode_for_labeling`, `read_for_device`) on a sample of
  the files in this process: CPU time per image and bytes per image it sends to the model actors.

All use the same random-init package (speed does not depend on the weights). Without the shared
data, `--generate N` renders 320 px JPEGs, or `--photos N` makes JPEGs of mixed photo sizes
(300-1,000 px, 2 % of 12 megapixels), into a temporary folder.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.core.archs import ARCHS  # noqa: E402
from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.core.config import CPU_BATCH_SIZE, DECODES, DEFAULT_GEOMETRY, GPU_BATCH_SIZE, LabelConfig  # noqa: E402
from cgi2real.formats.class_folders import scan_image_files  # noqa: E402
from cgi2real.formats.package import read_model_package  # noqa: E402
from cgi2real.imaging.gpu_eval import DevicePreset, decode_jpegs  # noqa: E402
from cgi2real.imaging.presets import EvalPreset  # noqa: E402
from cgi2real.model.networks import build_model, package_config, save_model_package
from cgi2real.pipelines.batches import decode_for_labeling, read_for_device
from cgi2real.pipelines.labeler import Labeler  # noqa: E402
from cgi2real.stages.label import run  # noqa: E402

COMPILE = {"auto": None, "on": True, "off": False}
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "horse_or_human", "train")


def bare_model(labeler: Labeler, pixels: np.ndarray, batch_size: int, seconds: float = 20.0) -> float:
    """img/s of the model stage alone over pre-decoded uint8 batches (one warm-up batch first),
    for at least `seconds` and at least 3 s, cycling over the batches: at 299 px on a CPU one pass
    over 4,096 images would take ten minutes."""
    def batch(start: int) -> dict:
        images = pixels[start:start + batch_size]
        return {"path": np.full(len(images), "x", object), "image": images, "error": np.full(len(images), "", object)}

    labeler(batch(0))
    if labeler.device.type == "cuda":
        torch.cuda.synchronize()
    starts = range(0, len(pixels) - batch_size + 1, batch_size) or [0]  # full batches: a short one would not time the model's batch
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < max(seconds, 3.0):  # a GPU needs several passes over the images to time
        for i in starts:
            done += len(labeler(batch(i))["probs"])  # returns numpy: the GPU work is finished when it does
            if labeler.device.type == "cpu" and time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def _bare_one_thread(package: str, pixels_file: str, batch_size: int, seconds: float) -> float:
    """One process of `bare_per_core`: img/s of a one-thread Labeler for `seconds`."""
    torch.set_num_threads(1)
    pixels = np.load(pixels_file, mmap_mode="r")
    labeler = Labeler(*read_model_package(package))
    batch = {"path": np.full(batch_size, "x", object), "image": np.ascontiguousarray(pixels[:batch_size]), "error": np.full(batch_size, "", object)}
    labeler(batch)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        i = (done % (len(pixels) - batch_size + 1)) if len(pixels) > batch_size else 0
        batch["image"] = np.ascontiguousarray(pixels[i:i + batch_size])
        labeler(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def bare_per_core(package: str, pixels: np.ndarray, batch_size: int, processes: int, seconds: float = 30.0) -> float:
    """img/s of `processes` one-thread model processes side by side, summed: the CPU ceiling when
    each core runs its own replica (no thread barriers), as `cgi2real label` does on CPU nodes."""
    import multiprocessing
    import tempfile as tf

    with tf.NamedTemporaryFile(suffix=".npy") as f:
        np.save(f.name, pixels)
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            return sum(pool.starmap(_bare_one_thread, [(package, f.name, batch_size, seconds)] * processes))


def naive_loop(labeler: Labeler, paths: list[str], image_size: int) -> float:
    """img/s of read -> decode -> preprocess -> predict, one file at a time."""
    preset = EvalPreset(image_size)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            pixels = preset(f.read()).numpy()[None]
        labeler({"path": np.array([path], object), "image": pixels, "error": np.array([""], object)})
    return len(paths) / (time.perf_counter() - start)


def file_batch(files, sample: int) -> dict:
    """The first `sample` files as the reading stage gets them: {path, size}."""
    return {"path": np.array(files.paths[:sample], object), "size": np.array(files.sizes[:sample])}


def reading_stage(files, preset, decode: str, sample: int = 512) -> tuple[float, float]:
    """(CPU ms per image, KiB per image sent on) of the reading stage of `decode` on the first `sample` files."""
    batch = file_batch(files, sample)
    n = len(batch["path"])
    start = time.process_time()  # the reading threads' CPU time is this process's
    out = (read_for_device if decode == "device" else decode_for_labeling)(batch, preset, files.root.fs)
    seconds = time.process_time() - start
    sent = sum(len(p) for p in out["payload"]) if decode == "device" else out["image"].nbytes
    return 1000 * seconds / n, sent / n / 1024


def device_pixel_differences(files, preset, device: torch.device, sample: int = 256) -> np.ndarray:
    """Per file, the mean absolute difference (in levels) between the model inputs of the two modes."""
    batch = file_batch(files, sample)
    cpu = decode_for_labeling(batch, preset, files.root.fs)["image"].astype(np.int16)
    read = read_for_device(batch, preset, files.root.fs)
    jpegs = np.flatnonzero(read["orientation"] > 0)
    on_device = DevicePreset(preset, device)([read["payload"][i] for i in jpegs], [int(read["orientation"][i]) for i in jpegs])
    return np.abs(on_device.cpu().numpy().astype(np.int16) - cpu[jpegs]).mean(axis=(1, 2, 3))


def device_stage(files, preset, device: torch.device, batch_size: int, sample: int = 2048) -> tuple[float, float]:
    """img/s of the model actor's decoding with --decode device, without the model: the batched
    JPEG decode alone, and decode plus framing (`DevicePreset`), over the first `sample` files."""
    read = read_for_device(file_batch(files, sample), preset, files.root.fs)
    jpegs = [i for i in range(len(read["path"])) if read["orientation"][i] > 0]
    batches = [jpegs[i:i + batch_size] for i in range(0, len(jpegs), batch_size)]
    framing = DevicePreset(preset, device)

    def rate(step) -> float:
        step(batches[0])  # warm-up: CUDA context, nvJPEG handles, first plans
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(jpegs) / (time.perf_counter() - start)

    payloads = read["payload"]
    return (
        rate(lambda b: decode_jpegs([payloads[i] for i in b], device)),
        rate(lambda b: framing([payloads[i] for i in b], [int(read["orientation"][i]) for i in b])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=SHARED if os.path.isdir(SHARED) else None)
    parser.add_argument("--arch", nargs="+", choices=list(ARCHS), default=["inception_v3"], help="one measurement per arch, compared at the end")
    parser.add_argument("--image-size", type=int, default=None, help="default: each arch's own (299 Inception v3, 224 Lite0)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: cgi2real label's (256 GPU, 32 CPU)")
    parser.add_argument("--generate", type=int, default=0, help="label N generated 320 px JPEGs instead of --data")
    parser.add_argument("--photos", type=int, default=0, help="label N generated JPEGs of mixed photo sizes instead of --data")
    parser.add_argument("--decode", nargs="+", choices=DECODES, default=None, help="pipeline runs, one per mode (default: cgi2real label's)")
    parser.add_argument("--actors", nargs="+", type=int, default=[None], help="model replicas per run (default: cgi2real label's)")
    parser.add_argument("--bare-images", type=int, default=4096, help="images pre-decoded for the bare model")
    parser.add_argument("--naive-images", type=int, default=64)
    parser.add_argument("--bare-per-core", action="store_true", help="also time one one-thread model process per core (CPU)")
    parser.add_argument("--compile", nargs="+", choices=["auto", "on", "off"], default=["auto"],
                        help="the model step compiled or not (auto: cgi2real label's default, on GPUs only); the bare model is timed both ways "
                             "when more than one is given, and the pipeline runs with each")
    parser.add_argument("--pipeline-compile", nargs="+", choices=["auto", "on", "off"], default=None,
                        help="the pipeline runs' compile modes, each one of --compile's (default: every --compile mode)")
    parser.add_argument("--gpu", action="store_true", help="model on the GPU (bf16) in all three")
    args = parser.parse_args()
    if not set(args.pipeline_compile or ()) <= set(args.compile):
        parser.error("--pipeline-compile takes modes that --compile times the bare model with")

    tmp = tempfile.mkdtemp(prefix="cgi2real-bench-label-")
    data = args.data
    if args.photos:
        from generated import photo_sized_dataset

        start = time.perf_counter()
        data = photo_sized_dataset(os.path.join(tmp, "photos"), args.photos)
        print(f"made {args.photos} photo-sized JPEGs in {time.perf_counter() - start:.0f} s")
    elif data is None or args.generate:
        from generated import replicated_dataset

        data = replicated_dataset(os.path.join(tmp, "images"), max(1, args.generate // 3) if args.generate else 350)
    files = scan_image_files(data)
    rates = {arch: measure_arch(arch, args, files, tmp) for arch in args.arch}
    if len(rates) > 1:
        first = args.arch[0]
        for arch, (bare, pipeline) in list(rates.items())[1:]:
            print(f"{arch} against {first}: bare model {bare / rates[first][0]:.2f}x, pipeline {pipeline / rates[first][1]:.2f}x (the last run of each)")


def measure_arch(arch: str, args, files, tmp: str) -> tuple[float, float]:
    """Every measurement for one arch at its size; returns (bare model, last pipeline run) img/s."""
    image_size = args.image_size or ARCHS[arch].image_size
    batch_size = args.batch_size or (GPU_BATCH_SIZE if args.gpu else CPU_BATCH_SIZE)
    model = build_model(len(DEFAULT_CLASSES), image_size, "none", arch=arch)
    package = os.path.join(tmp, f"pkg-{arch}")
    save_model_package(model.state_dict(), package_config(model, list(DEFAULT_CLASSES), image_size, DEFAULT_GEOMETRY), package)
    where = torch.cuda.get_device_name() if args.gpu else f"{torch.get_num_threads()} torch threads"
    print(f"=== {arch}: {len(files)} images in {files.root.uri}, {image_size} px, batch {batch_size}, {where}, {os.cpu_count()} cores")

    preset = EvalPreset(image_size)
    for decode in DECODES:
        ms, kib = reading_stage(files, preset, decode)
        print(f"reading stage, --decode {decode}: {ms:.2f} ms CPU per image, {kib:.1f} KiB per image to the model actors")

    device = torch.device("cuda" if args.gpu else "cpu")
    diffs = device_pixel_differences(files, preset, device)
    print(f"--decode device pixels vs --decode cpu on {len(diffs)} files: mean abs difference {diffs.mean():.2f} levels, "
          f"per-file mean at most {diffs.max():.2f} (99th percentile {np.percentile(diffs, 99):.2f})")

    decode_rate, frame_rate = device_stage(files, preset, device, batch_size, 2048 if args.gpu else 256)
    print(f"device stage alone (batch {batch_size}): batched JPEG decoding {decode_rate:.0f} img/s, decoding and framing {frame_rate:.0f} img/s")

    config, weights = read_model_package(package)
    decoded = decode_for_labeling(file_batch(files, args.bare_images), preset, files.root.fs)
    assert (decoded["error"] == "").all(), "the benchmark images must all decode"
    bares = {}
    for mode in args.compile:
        start = time.perf_counter()
        labeler = Labeler(config, weights, use_gpu=args.gpu, batch_size=batch_size, compile=COMPILE[mode])
        ready = time.perf_counter() - start
        bare = bares[mode] = bare_model(labeler, decoded["image"], batch_size)
        print(f"bare model, compile {mode} ({'compiled' if labeler.step.compiled else 'eager'}; pre-decoded, batch {batch_size}): {bare:.1f} img/s; "
              f"the model built in {ready:.1f} s, of which warm-up {labeler.step.warm_up_seconds:.1f} s")
    del labeler
    naive = naive_loop(Labeler(config, weights, use_gpu=args.gpu, compile=False), list(files.paths[: args.naive_images]), image_size)
    print(f"naive loop (one image at a time, {args.naive_images} images): {naive:.1f} img/s")
    if args.bare_per_core:
        per_core = bare_per_core(package, decoded["image"][:1024], batch_size, os.cpu_count())
        print(f"bare model, one one-thread process per core ({os.cpu_count()}, 30 s): {per_core:.1f} img/s")
    del decoded

    pipeline = 0.0
    for decode, actors, mode in [(d, a, m) for d in args.decode or [None] for a in args.actors for m in args.pipeline_compile or args.compile]:
        out = os.path.join(tmp, f"labels-{arch}-{decode}-{actors}-{mode}")
        cfg = LabelConfig(source=files.root.uri, model=package, out=out, batch_size=batch_size, actors=actors, use_gpu=args.gpu, decode=decode,
                          compile=COMPILE[mode])
        summary = run(cfg)
        assert summary.labeled == len(files) and not summary.errors
        pipeline, steady = summary.images_per_second, summary.steady_images_per_second
        assert steady, "too few images to measure the rate after start-up: label more"
        print(f"pipeline --decode {decode or 'default'} --actors {actors or 'default'} --compile {mode} ({summary.labeled} images in {summary.seconds:.1f} s): "
              f"{pipeline:.1f} img/s")
        print(f"  first results after {summary.first_seconds:.1f} s ({summary.first_rows} rows; {summary.first_since_start:.1f} s after the run started, "
              f"listing included), then {steady:.1f} img/s")
        print(f"  ratio pipeline / bare model (compile {mode}) = {pipeline / bares[mode]:.2f} end to end, {steady / bares[mode]:.2f} after start-up")
        if args.bare_per_core:
            print(f"  ratio pipeline / bare per core = {pipeline / per_core:.2f} end to end, {steady / per_core:.2f} after start-up")
        print(f"  speed-up over the naive loop = {pipeline / naive:.1f}x end to end, {steady / naive:.1f}x after start-up")
        shutil.rmtree(out)
    return bare, pipeline


if __name__ == "__main__":
    main()
