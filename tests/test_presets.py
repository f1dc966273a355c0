"""Decoding and the train/eval presets."""

import io
import resource
import struct
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from cgi2real.presets import (
    FORMATS,
    GEOMETRIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_COLOUR,
    EvalPreset,
    ImageError,
    TrainPreset,
    decode_image,
    normalize,
)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def striped(w=200, h=120) -> Image.Image:
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = (250, 10, 10)
    pixels[:, w // 2:] = (10, 10, 250)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("size", [75, 96, 299])
def test_eval_preset_gives_uint8_square_and_is_deterministic(size):
    data = encode(striped())
    a, b = EvalPreset(size)(data), EvalPreset(size)(data)
    assert a.shape == (3, size, size) and a.dtype == torch.uint8
    assert torch.equal(a, b)


def test_eval_preset_center_crops_after_resizing_short_side():
    out = EvalPreset(100)(encode(striped(400, 100), "PNG"))
    # short side 100 -> 114, long side 456; the 100 px center crop straddles both halves
    assert out[0, 50, 10] > 200 and out[2, 50, 90] > 200


def test_train_preset_augments_differently_each_call():
    data = encode(striped())
    preset = TrainPreset(96)
    outs = [preset(data) for _ in range(4)]
    assert all(o.shape == (3, 96, 96) and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_normalize_scales_and_standardizes():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))
    zeros = normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(zeros[0, :, 0, 0], torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]))


@pytest.mark.parametrize(
    "img, fmt",
    [
        (Image.new("L", (40, 30), 128), "PNG"),
        (Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        (Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"),
        (Image.new("P", (40, 30), 3), "GIF"),
        (Image.fromarray(np.full((30, 40), 65535, np.uint16)), "PNG"),
    ],
    ids=["gray", "cmyk", "rgba", "palette", "16bit"],
)
def test_unusual_modes_are_converted_to_rgb(img, fmt):
    out = decode_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_16_bit_white_stays_white_and_transparent_becomes_white():
    white16 = decode_image(encode(Image.fromarray(np.full((4, 4), 65535, np.uint16)), "PNG"))
    assert np.asarray(white16).min() == 255
    clear = decode_image(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"))
    assert np.asarray(clear).min() == 255


def test_exif_orientation_is_respected():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(Image.new("RGB", (60, 20)), "JPEG", exif=exif))
    assert out.size == (20, 60)


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty"), (b"hello, not an image", "not an image")],
)
def test_bad_bytes_give_a_short_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_an_image_error():
    data = encode(striped(300, 300))
    with pytest.raises(ImageError):
        EvalPreset(96)(data[: len(data) // 3])


def exif_with_mistyped_tag(orientation: int = 6) -> bytes:
    """Raw EXIF: an orientation, and tag 0x0122 (GrayResponseUnit, a SHORT) stored as ASCII, as found in the wild."""
    entries = [
        struct.pack("<HHI4s", 0x0112, 3, 1, struct.pack("<H", orientation) + b"\0\0"),
        struct.pack("<HHI4s", 0x0122, 2, 4, b"abc\0"),
    ]
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)


def test_a_mistyped_exif_tag_still_decodes_upright():
    data = encode(Image.new("RGB", (60, 20), (200, 30, 30)), "JPEG", exif=exif_with_mistyped_tag(6))
    assert decode_image(data).size == (20, 60)  # orientation 6 applied
    assert EvalPreset(96)(data).shape == (3, 96, 96)
    pixels, _ = TrainPreset(96).transform(data)
    assert pixels.shape == (3, 96, 96)


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "TIFF", "SGI", "DDS", "ICNS", "PPM", "IM"])
def test_only_the_listed_formats_are_decoded_whatever_the_name(fmt):
    img = Image.new("RGB", (64, 64), (10, 120, 200)) if fmt != "DDS" else Image.new("RGBA", (64, 64))
    with pytest.raises(ImageError, match="not an image"):
        decode_image(encode(img, fmt))
    for listed in FORMATS:
        assert decode_image(encode(Image.new("RGB", (8, 8)), listed)).size == (8, 8)


def test_the_pixel_limit_applies_to_what_a_jpeg_draft_decodes():
    big = encode(Image.new("RGB", (9000, 9000), (40, 80, 120)), "JPEG", quality=50)  # 81 Mpx, over the limit at full size
    started = time.perf_counter()
    out = EvalPreset(96)(big)
    assert out.shape == (3, 96, 96) and abs(int(out[2].float().mean()) - 120) <= 2
    assert time.perf_counter() - started < 2  # decoded at 1/8 scale, not 81 Mpx
    with pytest.raises(ImageError, match="too large: 9000x9000"):
        decode_image(big)  # no draft: the full size counts
    with pytest.raises(ImageError, match="too large"):
        decode_image(encode(Image.new("L", (9000, 9000)), "PNG"))  # PNGs have no draft


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", [(20000, 1), (1, 20000), (4000, 2)])
def test_extreme_aspect_ratios_never_make_a_large_buffer(geometry, shape):
    data = encode(Image.new("RGB", shape, (90, 90, 90)), "PNG")
    assert len(data) < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert EvalPreset(96, geometry)(data).shape == (3, 96, 96)
    assert TrainPreset(96, geometry=geometry).transform(data)[0].shape == (3, 96, 96)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: the old resize took 1.6 GB


def halves(w: int, h: int) -> Image.Image:
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = (250, 10, 10)
    pixels[:, w // 2:] = (10, 10, 250)
    return Image.fromarray(pixels)


def test_geometries_keep_or_drop_the_sides_of_a_wide_picture():
    wide = encode(halves(400, 100), "PNG")  # 4:1, red left half, blue right half
    crop, pad, squash = (EvalPreset(100, g)(wide).numpy().astype(int) for g in ("crop", "pad", "squash"))
    # crop: the centre square only, a quarter of the width
    assert (crop[0, 50, :40] > 200).all() and (crop[2, 50, 60:] > 200).all()
    # pad: the whole picture in a 100 x 25 band, the mean colour above and below
    assert pad[:, 0, 50].tolist() == list(MEAN_COLOUR) and pad[:, 99, 50].tolist() == list(MEAN_COLOUR)
    assert (pad[0, 50, :45] > 200).all() and (pad[2, 50, 55:] > 200).all() and abs(int((pad[0, :, 10] > 200).sum()) - 25) <= 1
    # squash: the whole picture stretched over the square
    assert (squash[0, :, :45] > 200).all() and (squash[2, :, 55:] > 200).all()
    square = encode(halves(120, 120), "PNG")
    assert np.abs(EvalPreset(96, "pad")(square).int() - EvalPreset(96, "squash")(square).int()).max() <= 1  # the same on squares
    with pytest.raises(ValueError, match="geometry 'fit'"):
        EvalPreset(96, "fit")


def test_the_centre_crop_is_torchvisions_resize_and_crop():
    from torchvision.transforms import v2 as T

    rng = np.random.default_rng(0)
    for w, h in [(1344, 768), (768, 1344), (640, 427), (97, 500)]:
        img = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), np.uint8)).resize((w, h), Image.BICUBIC)
        reference = T.Compose([T.Resize(110, antialias=True), T.CenterCrop(96), T.PILToTensor()])(img)
        assert np.abs(EvalPreset(96, "crop")(encode(img, "PNG")).int() - reference.int()).max() <= 1


def test_training_letterboxes_for_pad_and_stretches_for_the_others():
    """Each geometry's training crops look like what its eval shows: only "pad" has bands of fill."""
    data = encode(halves(120, 120), "PNG")
    torch.manual_seed(0)
    banded = {g: 0 for g in GEOMETRIES}
    for geometry in GEOMETRIES:
        preset = TrainPreset(96, "basic", geometry=geometry)
        preset.transforms = T.Compose([T.PILToTensor()])  # the random crop and its framing alone
        for _ in range(40):
            pixels = preset.transform(data)[0].numpy().astype(int)
            rows = (np.abs(pixels - np.array(MEAN_COLOUR)[:, None, None]).sum(0) <= 3).all(axis=1)
            cols = (np.abs(pixels - np.array(MEAN_COLOUR)[:, None, None]).sum(0) <= 3).all(axis=0)
            banded[geometry] += bool(rows[0] or rows[-1] or cols[0] or cols[-1])
    assert banded["crop"] == banded["squash"] == 0 and banded["pad"] >= 20
