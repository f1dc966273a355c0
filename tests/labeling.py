"""Helpers for the labeling tests: a package with meaningful outputs, a zoo of awkward files."""

import io
import os
import struct
import zlib

import numpy as np
import torch
from PIL import Image

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
from cgi2real.core.classes import DEFAULT_CLASSES, MASKS_FOLDER, is_image_name
from cgi2real.core.config import DEFAULT_GEOMETRY
from cgi2real.imaging.gpu_eval import DevicePreset, device_orientation
from cgi2real.imaging.presets import EvalPreset, ImageError, normalize
from cgi2real.model.networks import build_model, load_model_package, package_config, save_model_package
from cgi2real.storage.locations import locate


def make_package(out: str, image_folder: str, image_size: int = 96, seed: int = 0) -> str:
    """A random-init package whose BatchNorm statistics are measured on real images.

    Untrained running statistics make activations explode in eval mode, so every image would get
    the same class with probability 1.0; measured ones give varied, unsaturated predictions, which
    makes "labels equal direct predictions" a real check.
    """
    torch.manual_seed(seed)
    model = build_model(len(DEFAULT_CLASSES), image_size, "none")
    torch.nn.init.normal_(model.fc.weight, std=0.1)  # build_model zeroes it: every image would tie
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    preset = EvalPreset(image_size)
    images = torch.stack([preset(open(p, "rb").read()) for p in image_files(image_folder)])
    model.train()
    with torch.no_grad():
        model(normalize(images, IMAGENET_MEAN, IMAGENET_STD))
    model.eval()
    save_model_package(model.state_dict(), package_config(model, list(DEFAULT_CLASSES), image_size, DEFAULT_GEOMETRY), out)
    return out


def image_files(folder: str) -> list[str]:
    """Every file under `folder` with an image extension, figure masks aside: the inputs a label run must cover."""
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if is_image_name(f) and MASKS_FOLDER not in d.split(os.sep)
    )


def direct_probabilities(package_dir: str, paths: list[str], decode: str = "cpu") -> dict[str, np.ndarray | None]:
    """Each file predicted on its own, batch of one, without Ray (None: not decodable).

    With decode="device", a JPEG the device decoder takes is decoded and framed by `DevicePreset`
    (on CPU here), any other file by the CPU preset, as `--decode device` does.
    """
    package = load_model_package(package_dir)
    preset = package.eval_preset()
    on_device = DevicePreset(preset, torch.device("cpu"))
    result = {}
    for path in paths:
        data = open(path, "rb").read()
        orientation = device_orientation(data) if decode == "device" else None
        try:
            pixels = on_device([data], [orientation])[0] if orientation else preset(data)
        except ImageError:
            result[path] = None
            continue
        with torch.no_grad():
            logits = package.model(normalize(pixels[None], package.mean, package.std))
        result[path] = torch.softmax(logits, dim=1)[0].numpy()
    return result


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (a decompression bomb's header) but holds almost none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def upright_and_exif_rotated() -> tuple[bytes, bytes]:
    """The same picture twice: stored upright, and stored sideways with EXIF orientation 6 (lossless)."""
    pixels = np.zeros((40, 120, 3), np.uint8)
    pixels[:, :40] = (200, 30, 30)
    pixels[10:30, 60:] = (30, 30, 200)
    upright = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encode(upright, "PNG"), encode(upright.rotate(90, expand=True), "PNG", exif=exif)


def write_zoo(folder: str) -> dict[str, str | None]:
    """Awkward files; returns file name -> expected error reason (None: must be labeled)."""
    os.makedirs(folder, exist_ok=True)
    jpeg = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)), "JPEG")
    upright, rotated = upright_and_exif_rotated()
    files = {
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "zero_bytes.jpg": (b"", "empty file"),
        "text.jpg": (b"this is not a picture\n", "not an image"),
        "huge_dimensions.png": (png_header_only(100_000, 100_000), "too large"),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), None),
        "cmyk.jpg": (encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"), None),
        "sixteen_bit.png": (encode(Image.fromarray(np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)), "PNG"), None),
        "rgba.png": (encode(Image.new("RGBA", (64, 48), (0, 200, 0, 128)), "PNG"), None),
        "palette.gif": (encode(Image.new("P", (64, 48), 5), "GIF"), None),
        "upright.png": (upright, None),
        "exif_rotated.png": (rotated, None),
        "UPPER_CASE.JPEG": (jpeg, None),
    }
    for name, (data, _) in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an input: wrong extension\n")
    return {name: reason for name, (_, reason) in files.items()}


def batch_of(paths: list[str], size: int = 96) -> dict:
    """A decoded batch as the pipeline's CPU stage makes it."""
    from cgi2real.pipelines.batches import decode_for_labeling

    return decode_for_labeling({"path": np.array(paths, object), "size": np.array([os.path.getsize(p) for p in paths])}, EvalPreset(size), locate("/").fs)
