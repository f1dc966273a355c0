"""Training throughput: cgi2real on Ray Train vs a bare single-process torch loop, in one run.

    python bench/train.py [--data ../shared/data/horse_or_human/train] [--image-size 128]

Both sides train the same model (Inception v3, fine-tuning from Mixed_6a, batch 32, AdamW) on
the same images. The bare loop gets its batches already decoded and augmented in memory (the
model-compute ceiling); cgi2real decodes and augments every epoch in Ray Data, streams the
batches into a Ray Train worker, validates and checkpoints. The first epoch of each side is
warm-up; the printed ratio compares the steady epochs. Without the shared data, images are
generated into a temporary folder.

`--decode cpu device` runs cgi2real once per mode (device: JPEG bytes to the workers, which
decode and augment them in batches) and prints, per mode, the reading stage's CPU time and the
bytes per image it sends to the workers, measured in this process on a sample of the files.
"""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from cgi2real.core.classes import composite_pairs  # noqa: E402
from cgi2real.core.config import TrainConfig  # noqa: E402
from cgi2real.core.errors import RunFailed  # noqa: E402
from cgi2real.formats.class_folders import scan_labeled_dataset  # noqa: E402
from cgi2real.imaging.gpu_train import DeviceTrainPreset  # noqa: E402
from cgi2real.imaging.presets import TrainPreset  # noqa: E402
from cgi2real.model.networks import build_model, set_trainable  # noqa: E402
from cgi2real.model.training import MaskedCrossEntropy, make_optimizer, train_one_epoch
from cgi2real.pipelines.batches import load_image_batch, load_training_batch, read_training_for_device
from cgi2real.pipelines.datasets import train_preset  # noqa: E402
from cgi2real.stages.train import run

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "horse_or_human", "train")


def bare_loop(cfg: TrainConfig, epochs: int, device: torch.device) -> tuple[list[float], list[float]]:
    """(img/s, training loss) per epoch of train_one_epoch over pre-decoded in-memory batches, no Ray."""
    images = scan_labeled_dataset(cfg.data[0], cfg.classes)
    preset = TrainPreset(cfg.image_size, cfg.augment, cfg.background_prob)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = load_image_batch({"path": images.paths, "label": images.labels}, preset, [images.root.fs], pool.map)
    assert decoded["ok"].all(), "the benchmark images must all decode"
    pixels, labels = torch.from_numpy(decoded["image"]), torch.from_numpy(decoded["label"])
    n = len(images) // cfg.batch_size * cfg.batch_size  # full batches only, as training drops the last
    torch.manual_seed(0)
    model = build_model(len(cfg.classes), cfg.image_size, "none").to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    set_trainable(model, "finetune", cfg.unfreeze_from)
    optimizer, _ = make_optimizer(model, cfg, "finetune")
    loss_fn = MaskedCrossEntropy().to(device)
    rates, losses = [], []
    for _ in range(epochs):
        order = torch.randperm(len(images))[:n]
        batches = (
            {"image": pixels[i], "label": labels[i], "ok": torch.ones(len(i), dtype=torch.bool)}
            for i in order.split(cfg.batch_size)
        )
        stats = train_one_epoch(model, loss_fn, optimizer, batches, device)
        rates.append(stats.images_per_second)
        losses.append(stats.loss)
    return rates, losses


def reading_stage(cfg: TrainConfig, decode: str, device: torch.device, sample: int = 256) -> tuple[float, float, float]:
    """(reading CPU ms per image, KiB per image sent to the workers, worker ms per image) of `decode`
    on the first `sample` files, in this process (the worker's side on `device`)."""
    images = scan_labeled_dataset(cfg.data[0], cfg.classes)
    n = min(sample, len(images))
    masks = images.masks[:n] if images.masks else ("",) * n
    batch = {"path": np.array(images.paths[:n], object), "label": np.array(images.labels[:n]), "mask": np.array(masks, object)}
    preset, fs, pairs = train_preset(cfg), [images.root.fs], composite_pairs(cfg.classes)
    start = time.process_time()  # the reading threads' CPU time is this process's
    if decode == "cpu":
        out = load_training_batch(batch, preset, fs, pairs, cfg.paste_prob)
        return 1000 * (time.process_time() - start) / n, out["image"].nbytes / n / 1024, 0.0
    rows = read_training_for_device(batch, preset, fs, masks=True)
    reading = 1000 * (time.process_time() - start) / n
    sent = sum(len(p) + len(m) + 4 * 4 + 2 for p, m in zip(rows["payload"], rows["mask"]))  # + box, scale, orientation
    augment = DeviceTrainPreset(preset, device, pairs, cfg.paste_prob)
    augment({k: v[:cfg.batch_size] for k, v in rows.items()})  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for first in range(0, n, cfg.batch_size):
        augment({k: v[first:first + cfg.batch_size] for k, v in rows.items()})
    if device.type == "cuda":
        torch.cuda.synchronize()
    return reading, sent / n / 1024, 1000 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=SHARED if os.path.isdir(SHARED) else None)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="per side; the first is warm-up")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=200, help="generated images per class, without --data")
    parser.add_argument("--generate", action="store_true", help="use generated images even if --data exists")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (bf16) on both sides")
    parser.add_argument("--decode", nargs="+", default=["cpu"], choices=["cpu", "device"], help="cgi2real runs, one per mode")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="cgi2real-bench-")
    data, classes = args.data, ("horse", "human")
    if data is None or args.generate:
        from generated import replicated_dataset

        data, classes = os.path.join(tmp, "data"), ("both", "horse", "human")
        replicated_dataset(data, args.per_class)
    cfg = TrainConfig(
        data=(os.path.abspath(data),), out=os.path.join(tmp, "pkg"), classes=classes, weights="none",
        image_size=args.image_size, epochs_head=0, epochs_finetune=args.epochs, batch_size=args.batch_size,
        workers=args.workers, use_gpu=args.gpu, storage=os.path.join(tmp, "runs"), name="bench", val_fraction=0.1,
    )
    device = torch.device("cuda" if args.gpu else "cpu")
    where = torch.cuda.get_device_name() if args.gpu else f"{torch.get_num_threads()} threads"
    print(f"data {cfg.data[0]}, {args.image_size} px, batch {args.batch_size}, {where}, {os.cpu_count()} cores")

    for decode in args.decode:
        reading, kib, worker = reading_stage(cfg, decode, device)
        on_worker = f", then {worker:.2f} ms per image decoding and augmenting in the worker ({device.type})" if decode == "device" else ""
        print(f"reading stage, --decode {decode}: {reading:.2f} ms CPU per image, {kib:.1f} KiB per image to the workers{on_worker}")
    bare, bare_losses = bare_loop(cfg, args.epochs, device)
    steady_bare = sum(bare[1:]) / len(bare[1:])
    print(f"bare torch loop, img/s per epoch:  {', '.join(f'{r:.1f}' for r in bare)}; training loss {', '.join(f'{x:.4f}' for x in bare_losses)}")
    for decode in args.decode:
        start = time.perf_counter()
        try:
            summary = run(replace(cfg, decode=decode, name=f"bench-{decode}", out=os.path.join(tmp, f"pkg-{decode}")))
        except RunFailed as e:  # a diverged run, say: the other mode still runs
            print(f"cgi2real --decode {decode}: {e}")
            continue
        wall = time.perf_counter() - start
        ray_rates = [e["img_per_s"] for e in summary.history]
        steady_ray = sum(ray_rates[1:]) / len(ray_rates[1:])
        print(f"cgi2real --decode {decode}, img/s per epoch: {', '.join(f'{r:.1f}' for r in ray_rates)}")
        print(f"cgi2real --decode {decode}, whole run incl. Ray start, validation, checkpoints: {wall:.1f} s")
        print(f"ratio (steady epochs) --decode {decode} / bare = {steady_ray:.1f} / {steady_bare:.1f} = {steady_ray / steady_bare:.2f}")


if __name__ == "__main__":
    main()
