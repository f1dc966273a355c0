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

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
from cgi2real.core.classes import DEFAULT_CLASSES, composite_pairs
from cgi2real.core.config import GEOMETRIES
from cgi2real.core.errors import InputError
from cgi2real.imaging.presets import (
    FORMATS,
    MEAN_COLOUR,
    EvalPreset,
    ImageError,
    TrainPreset,
    blend,
    decode_image,
    normalize,
    paste_figures,
    random_background,
)
from cgi2real.synth.scenes import render_scene

BOTH, HORSE, HUMAN = range(3)


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


# What each EXIF orientation asks of the stored pixels for display (the EXIF 2.3 table), written
# out here rather than taken from the code under test.
UPRIGHT = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Four flat colours, one per quadrant: every flip and rotation of it looks different."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (220, 30, 30)
    pixels[: height // 2, width // 2:] = (30, 220, 30)
    pixels[height // 2:, : width // 2] = (30, 30, 220)
    pixels[height // 2:, width // 2:] = (230, 230, 40)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_shows_the_picture_upright(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = quadrants()
    out = decode_image(encode(stored, "JPEG", quality=95, exif=exif))
    turn = UPRIGHT[orientation]
    expected = np.asarray(stored.transpose(turn) if turn is not None else stored, dtype=np.int16)
    assert out.size == (expected.shape[1], expected.shape[0])
    assert np.abs(np.asarray(out, dtype=np.int16) - expected).mean() < 8  # JPEG noise only; a wrong turn is ~100


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


def test_geometries_keep_or_drop_the_sides_of_a_wide_picture():
    wide = encode(striped(400, 100), "PNG")  # 4:1, red left half, blue right half
    crop, pad, squash = (EvalPreset(100, g)(wide).numpy().astype(int) for g in ("crop", "pad", "squash"))
    # crop: the centre square only, a quarter of the width
    assert (crop[0, 50, :40] > 200).all() and (crop[2, 50, 60:] > 200).all()
    # pad: the whole picture in a 100 x 25 band, the mean colour above and below
    assert pad[:, 0, 50].tolist() == list(MEAN_COLOUR) and pad[:, 99, 50].tolist() == list(MEAN_COLOUR)
    assert (pad[0, 50, :45] > 200).all() and (pad[2, 50, 55:] > 200).all() and abs(int((pad[0, :, 10] > 200).sum()) - 25) <= 1
    # squash: the whole picture stretched over the square
    assert (squash[0, :, :45] > 200).all() and (squash[2, :, 55:] > 200).all()
    square = encode(striped(120, 120), "PNG")
    assert np.abs(EvalPreset(96, "pad")(square).int() - EvalPreset(96, "squash")(square).int()).max() <= 1  # the same on squares
    with pytest.raises(InputError, match="--geometry 'fit'"):
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
    data = encode(striped(120, 120), "PNG")
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


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def reddish(pixels: torch.Tensor) -> np.ndarray:
    """Where red clearly dominates blue: a chroma ratio that colour jitter (no hue) cannot flip."""
    r, b = pixels[0].float(), pixels[2].float()
    return ((r - b) / (r + b + 1) > 0.25).numpy()


def interior(region: np.ndarray) -> np.ndarray:
    """The pixels of a boolean region whose 8 neighbours are in it too."""
    padded = np.pad(region, 1)
    h, w = region.shape
    return np.logical_and.reduce([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def square_image(size=120, box=(30, 70)) -> tuple[bytes, bytes]:
    """A red square on blue, and its mask."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[...] = (20, 20, 230)
    mask = np.zeros((size, size), np.uint8)
    pixels[box[0]:box[1], box[0]:box[1]] = (230, 20, 20)
    mask[box[0]:box[1], box[0]:box[1]] = 255
    return png(pixels), png(mask)


@pytest.mark.parametrize("seed", range(5))
def test_the_mask_follows_the_image_through_crops_flips_and_rotations(seed):
    image, mask = square_image()
    pixels, figure = TrainPreset(96, "basic").transform(image, mask, np.random.default_rng(seed))
    red = reddish(pixels)
    inside, outside = interior(figure > 0.95), interior(figure < 0.05)  # edges are interpolated differently
    assert inside.sum() > 100
    assert red[inside].mean() > 0.97 and red[outside].mean() < 0.03


def test_random_background_replaces_only_what_is_outside_the_figure():
    image, mask = square_image()
    torch.manual_seed(0)  # the geometric and colour draws; the rng draws the background
    pixels, figure = TrainPreset(96, "basic", background_prob=1.0).transform(image, mask, np.random.default_rng(0))
    torch.manual_seed(0)
    red, original = reddish(pixels), TrainPreset(96, "basic").transform(image, mask, np.random.default_rng(0))[0]
    inside = interior(figure > 0.95)
    assert red[inside].mean() > 0.97
    outside = figure < 0.05
    assert np.abs(pixels.float() - original.float()).mean(0).numpy()[outside].mean() > 20  # the blue backdrop is gone
    assert np.abs(pixels.numpy()[:, figure > 0.999].astype(int) - original.numpy()[:, figure > 0.999]).max() <= 1  # the figure stays
    backgrounds = [random_background(64, np.random.default_rng(s)) for s in range(8)]
    assert all(b.shape == (3, 64, 64) and b.dtype == np.uint8 for b in backgrounds)
    assert len({b.mean().round(1) for b in backgrounds}) == 8
    a, b = np.zeros((3, 4, 4), np.uint8), np.full((3, 4, 4), 200, np.uint8)
    half = np.zeros((4, 4), np.float32)
    half[:, :2] = 1
    assert (blend(a, b, half)[:, :, :2] == 0).all() and (blend(a, b, half)[:, :, 2:] == 200).all()


def test_photo_artefacts_only_in_the_real_recipe():
    pixels = np.asarray(render_scene("human", 1, 96).image).transpose(2, 0, 1).copy()
    assert np.array_equal(TrainPreset(96, "basic").degrade(pixels, np.random.default_rng(0)), pixels)
    changed = [not np.array_equal(TrainPreset(96, "real").degrade(pixels, np.random.default_rng(s)), pixels) for s in range(10)]
    assert sum(changed) >= 5
    with pytest.raises(InputError, match="--augment 'strong'"):
        TrainPreset(96, "strong")


def test_paste_makes_both_from_a_horse_figure_in_a_human_image():
    pixels = np.stack([np.zeros((3, 32, 32), np.uint8), np.full((3, 32, 32), 255, np.uint8), np.full((3, 32, 32), 255, np.uint8)])
    figure = np.zeros((32, 32), np.float32)
    figure[12:20, 12:20] = 1
    labels = np.array([HORSE, HUMAN, BOTH])
    pairs = composite_pairs(DEFAULT_CLASSES)
    assert pairs == {(HORSE, HUMAN): BOTH, (HUMAN, HORSE): BOTH}
    mixed, new_labels = paste_figures(pixels, labels, [figure, None, None], pairs, 1.0, np.random.default_rng(0))
    # the human image got the horse's 8x8 figure (maybe partly out of frame); the horse had no human donor with a mask
    assert new_labels.tolist() == [HORSE, BOTH, BOTH]
    assert 0 < (mixed[1, 0] == 0).sum() <= 64 and np.array_equal(mixed[0], pixels[0]) and np.array_equal(mixed[2], pixels[2])
    assert labels.tolist() == [HORSE, HUMAN, BOTH]  # inputs untouched
    unchanged, same = paste_figures(pixels, labels, [figure, None, None], pairs, 0.0, np.random.default_rng(0))
    assert same.tolist() == labels.tolist() and np.array_equal(unchanged, pixels)
    assert composite_pairs(("cat", "dog")) == {}

