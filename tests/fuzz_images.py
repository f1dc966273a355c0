"""Mutated image files for the fuzz test, and a runner that feeds them to both loaders.

`python -m tests.fuzz_images FOLDER` decodes every file in FOLDER with the labeling decoder and the
training loader, then prints one JSON line: the rows each produced, their reasons, and the peak
resident memory of the process (so the test can bound it from outside).
"""

import json
import os
import resource
import sys

import numpy as np
from PIL import Image

from tests.imaging.test_presets import exif_with_mistyped_tag
from tests.labeling import encode, png_header_only


def seeds() -> dict[str, bytes]:
    """Valid files to mutate: JPEG (with EXIF), progressive JPEG, PNG (RGB, RGBA, 16-bit), WebP."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).resize((160, 120), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 8
    return {
        "jpeg": encode(photo, "JPEG", quality=85, exif=exif),
        "progressive": encode(photo, "JPEG", quality=70, progressive=True),
        "exif": encode(photo, "JPEG", exif=exif_with_mistyped_tag(3)),
        "png": encode(photo, "PNG"),
        "rgba": encode(photo.convert("RGBA"), "PNG"),
        "png16": encode(Image.fromarray(rng.integers(0, 65535, (60, 80), np.uint16)), "PNG"),
        "webp": encode(photo, "WEBP", quality=80),
    }


def mutants(count: int, seed: int = 0) -> dict[str, bytes]:
    """`count` mutated files: bit flips, truncations, header and EXIF edits, extreme sizes."""
    rng = np.random.default_rng(seed)
    originals = seeds()
    files = {f"extreme_{w}x{h}.png": png_header_only(w, h) for w, h in [(20000, 1), (1, 20000), (100_000, 100_000), (65535, 2), (9000, 9000)]}
    files["thin_real.png"] = encode(Image.new("RGB", (20000, 1), (1, 2, 3)), "PNG")
    files["tall_real.webp"] = encode(Image.new("RGB", (2, 12000), (1, 2, 3)), "WEBP")
    for i in range(count - len(files)):
        name, data = list(originals.items())[i % len(originals)]
        data = bytearray(data)
        kind = ("flip", "truncate", "header", "exif", "splice")[i % 5]
        if kind == "flip":
            for _ in range(int(rng.integers(1, 20))):
                position = int(rng.integers(0, len(data)))
                data[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == "truncate":
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == "header":  # the first bytes hold the signature, sizes and markers
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, min(64, len(data))))] = int(rng.integers(0, 256))
        elif kind == "exif":  # rewrite bytes inside the EXIF block, if any, else near the start
            start = data.find(b"Exif")
            start = start if start >= 0 else 2
            for _ in range(int(rng.integers(1, 8))):
                data[min(len(data) - 1, start + int(rng.integers(0, 80)))] = int(rng.integers(0, 256))
        else:  # a chunk of one file inside another
            other = list(originals.values())[int(rng.integers(0, len(originals)))]
            at = int(rng.integers(0, len(data)))
            data[at:at] = other[: int(rng.integers(1, len(other)))]
        files[f"{i:04d}_{name}_{kind}.{'png' if 'png' in name or name == 'rgba' else 'webp' if name == 'webp' else 'jpg'}"] = bytes(data)
    return files


def write(folder: str, count: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, data in mutants(count).items():
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return sorted(paths)


def main(folder: str) -> None:
    from cgi2real.core.classes import DEFAULT_CLASSES, composite_pairs
    from cgi2real.imaging.presets import EvalPreset, TrainPreset
    from cgi2real.pipelines.batches import decode_for_labeling, load_training_batch
    from cgi2real.storage.locations import locate

    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))
    fs = locate("/").fs
    # Warm up, then measure: the imports and thread pools are not what the fuzz tests.
    decode_for_labeling({"path": np.array(paths[:2], object), "size": np.array([os.path.getsize(p) for p in paths[:2]])}, EvalPreset(96), fs)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    labeled, trained = [], []
    for start in range(0, len(paths), 32):
        chunk = paths[start:start + 32]
        batch = {"path": np.array(chunk, object), "size": np.array([os.path.getsize(p) for p in chunk])}
        out = decode_for_labeling(batch, EvalPreset(96, "crop"), fs)
        labeled += [{"path": p, "error": e} for p, e in zip(out["path"], out["error"])]
        rows = {"path": np.array(chunk, object), "mask": np.array([""] * len(chunk), object), "label": np.arange(len(chunk)) % 3, "root": np.zeros(len(chunk), np.int64)}
        out = load_training_batch(rows, TrainPreset(96, "real", 0.5, "pad"), [fs], composite_pairs(DEFAULT_CLASSES), 0.25)
        trained += [bool(ok) for ok in out["ok"]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"files": len(paths), "labeled": labeled, "trained": trained, "baseline_kib": baseline, "peak_kib": peak}))


if __name__ == "__main__":
    main(sys.argv[1])
