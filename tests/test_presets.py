"""Decoding and the train/eval presets."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cgi2real.presets import IMAGENET_MEAN, IMAGENET_STD, EvalPreset, ImageError, TrainPreset, decode_image, normalize


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
