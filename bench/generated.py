"""Generated benchmark images: a few rendered per class, copied under new names up to the count wanted.

Throughput does not depend on what the pictures show, and rendering thousands of 320 px scenes
would take longer than the benchmark itself.
"""

import os
import shutil

from cgi2real.core.classes import DEFAULT_CLASSES
from cgi2real.stages.synth import image_name, write_dataset


def replicated_dataset(out: str, per_class: int, size: int = 320, unique: int = 40) -> str:
    """Class folders with `per_class` JPEGs each, of which `unique` are distinct renders (rendered on every core)."""
    write_dataset(out, min(unique, per_class), size=size, seed=0, processes=os.cpu_count() or 1)
    for label in DEFAULT_CLASSES:
        for i in range(unique, per_class):
            shutil.copyfile(os.path.join(out, image_name(label, i % unique)), os.path.join(out, image_name(label, i)))
    return out


def photo_sized_dataset(out: str, count: int, unique: int = 500, large_share: float = 0.02, seed: int = 0) -> str:
    """A flat folder of `count` JPEGs of mixed sizes, as a bucket of photos has them.

    Most have a long side of 300-1,000 px (aspects 1:1 to 16:9, either way up); `large_share` are
    camera-sized 4,000 x 3,000 (12 megapixels). `unique` distinct files are made from upscaled
    renders with sensor-like noise (so they compress like photos, not like flat renders), and
    hard-linked under new names up to the count: decoding costs the same, the disk does not fill.
    """
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    renders = os.path.join(out, "_renders")
    replicated_dataset(renders, 8, unique=8)
    scenes = sorted(os.path.join(d, f) for d, _, files in os.walk(renders) for f in files if f.endswith(".jpg"))
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(unique):
        if i < round(unique * large_share):
            size = (4000, 3000)
        else:
            long = int(rng.integers(300, 1001))
            short = int(long / rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9]))
            size = (long, short) if rng.random() < 0.7 else (short, long)
        jobs.append((scenes[i % len(scenes)], size, os.path.join(out, f"u{i:05d}.jpg"), int(rng.integers(2**31))))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_photo_like, *zip(*jobs)))
    shutil.rmtree(renders)
    for i in range(count):
        name = os.path.join(out, f"img{i:06d}.jpg")
        os.link(jobs[(i * 7919) % unique][2], name)  # spread the large ones through the listing
    for _, _, path, _ in jobs:
        os.remove(path)
    return out


def _photo_like(scene: str, size: tuple[int, int], path: str, seed: int) -> None:
    import numpy as np
    from PIL import Image

    img = Image.open(scene).convert("RGB").resize(size, Image.BICUBIC)
    noisy = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, 5, (size[1], size[0], 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
