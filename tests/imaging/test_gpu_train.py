"""Training with `--decode device`: the recipe run in batches on the worker's device (here its CPU
code path) draws from the same distributions as the CPU recipe, crops the same pixels, and gives
unreadable files the same fate."""

import numpy as np
import pytest
import torch
from pyarrow.fs import LocalFileSystem

from cgi2real.core.classes import DEFAULT_CLASSES, composite_pairs
from cgi2real.core.config import GEOMETRIES
from cgi2real.imaging.gpu_train import DeviceTrainPreset, degrade, paste, read_for_training, upright
from cgi2real.imaging.presets import ImageError, TrainPreset, decode_image, paste_figures, paste_plan
from cgi2real.pipelines.batches import load_training_batch, read_training_for_device
from cgi2real.storage.reads import read_file
from tests.imaging.test_gpu_eval import jpeg, photo
from tests.labeling import encode, write_zoo

CPU = torch.device("cpu")
SIZE = 64


def as_batch(rows: list[tuple], labels=None) -> dict:
    """read_for_training's rows as the reading stage's batch."""
    payload, orientation, box, scale, mask = zip(*rows)
    return {
        "payload": np.array(payload, dtype=object), "orientation": np.array(orientation, dtype=np.int8), "box": np.array(box, dtype=np.int32),
        "scale": np.array(scale, dtype=np.int8), "mask": np.array(mask, dtype=object),
        "label": np.zeros(len(rows), np.int64) if labels is None else np.asarray(labels), "error": np.full(len(rows), "", dtype=object),
    }


def figure_mask(width: int, height: int) -> bytes:
    """A figure in the left half of the picture (255), as synth writes masks."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[height // 4: 3 * height // 4, width // 8: width // 2] = 255
    from PIL import Image

    return encode(Image.fromarray(pixels, "L"), "PNG")


def test_the_exif_turn_is_pillows_for_every_orientation():
    data = encode(photo(50, 30), "JPEG", quality=95)
    stored = torch.from_numpy(np.asarray(decode_image(data)).transpose(2, 0, 1).copy())
    for orientation in range(1, 9):
        turned = jpeg(photo(50, 30), orientation)  # stored turned the other way, with the tag
        expected = np.asarray(decode_image(turned)).transpose(2, 0, 1).astype(int)
        from torchvision.io import decode_jpeg

        got = upright(decode_jpeg(torch.frombuffer(bytearray(turned), dtype=torch.uint8)), orientation).numpy()
        assert got.shape == expected.shape and np.abs(got - expected).max() == 0, orientation
    assert upright(stored, 1) is stored


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_crop_on_the_device_is_the_cpu_crop_of_the_same_box(geometry):
    """Same torch seed -> the same box, drawn from the header on one side and from the decoded
    picture on the other; the device's antialiased resize gives Pillow's pixels within rounding,
    and the mask is framed by the same box."""
    preset = TrainPreset(SIZE, "light", geometry=geometry)
    device = DeviceTrainPreset(preset, CPU)
    for (width, height), orientation, reduced in [((150, 100), 1, False), ((110, 140), 6, False), ((160, 100), 3, False), ((600, 400), 8, True)]:
        data, mask = jpeg(photo(width, height, seed=width), orientation), figure_mask(*((height, width) if orientation >= 5 else (width, height)))
        for seed in range(4):
            torch.manual_seed(seed)
            row = read_for_training(preset, data, mask)
            torch.manual_seed(seed)
            expected, expected_mask = preset.crop(data, mask)
            assert row[1] == orientation and (row[3] > 1) == reduced
            got = device.crops(as_batch([row]), np.array([""], dtype=object))[0].round().numpy()
            difference = np.abs(got - np.asarray(expected).transpose(2, 0, 1))
            # a reduced picture: Pillow decodes it at a reduced scale, the device at full size
            assert difference.mean() < (4.0 if reduced else 0.6), (geometry, width, orientation, difference.mean())
            assert row[4] == np.asarray(expected_mask).tobytes()


def features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of uint8 (N, 3, S, S): what each step of the recipe moves."""
    x = images.astype(np.float32)
    grey = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    red = x[:, 0] - (x[:, 1] + x[:, 2]) / 2
    half = x.shape[-1] // 2
    return {
        "brightness": grey.mean((1, 2)),  # colour jitter
        "contrast": grey.std((1, 2)),  # jitter, backgrounds
        "saturation": (x.max(1) - x.min(1)).mean((1, 2)),  # jitter, grayscale
        "red left - right": red[:, :, :half].mean((1, 2)) - red[:, :, half:].mean((1, 2)),  # flips, crops, affine
        "red top - bottom": red[:, :half].mean((1, 2)) - red[:, half:].mean((1, 2)),  # crops, affine
        "fine detail": np.abs(grey[:, 1:-1, 1:-1] - _box3(grey)).mean((1, 2)),  # blur, noise, JPEG
        "stripes": _vertical_share(grey),  # the horizontal stripes' angle: rotation, shear
    }


def _box3(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape[-2:]
    return sum(grey[:, dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3)) / 9


def _vertical_share(grey: np.ndarray) -> np.ndarray:
    dy, dx = np.abs(np.diff(grey, axis=1)).mean((1, 2)), np.abs(np.diff(grey, axis=2)).mean((1, 2))
    return dy / (dx + dy)


def striped_picture() -> bytes:
    """`photo` with horizontal stripes (for angles) and fine grain (for blur and compression)."""
    from PIL import Image

    pixels = np.asarray(photo(120, 90, seed=5), np.float32).copy()
    pixels[(np.arange(90) // 4) % 2 == 0] += 50
    pixels += np.random.default_rng(0).normal(0, 20, pixels.shape)
    return encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), "JPEG", quality=95)


def ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic."""
    values = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), values, "right") / len(a) - np.searchsorted(np.sort(b), values, "right") / len(b)).max())


def cpu_recipe(preset: TrainPreset, data: bytes, mask: bytes | None, n: int) -> np.ndarray:
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        pixels, _ = preset.transform(data, mask, rng)
        out.append(preset.degrade(pixels.numpy(), rng))
    return np.stack(out)


def device_recipe(preset: TrainPreset, data: bytes, mask: bytes | None, n: int, batch: int = 50) -> np.ndarray:
    torch.manual_seed(2)
    rng = np.random.default_rng(2)
    device = DeviceTrainPreset(preset, CPU)
    out = [device(as_batch([read_for_training(preset, data, mask) for _ in range(batch)]), rng)["image"].numpy() for _ in range(n // batch)]
    return np.concatenate(out)


N = 300
KS_LIMIT = 1.95 * (2 / N) ** 0.5  # the two-sample test's critical value at the 0.1 % level


@pytest.mark.parametrize("augment, background_prob", [("light", 0.0), ("basic", 0.0), ("real", 0.0), ("real", 0.5)])
def test_the_device_recipe_draws_from_the_cpu_recipes_distributions(augment, background_prob):
    """Every feature of N augmented images, per image, is distributed alike on both paths (KS test),
    and within one device batch the images get their own draws, not the batch's."""
    preset = TrainPreset(SIZE, augment, background_prob)
    data, mask = striped_picture(), figure_mask(120, 90) if background_prob else None
    cpu, device = features(cpu_recipe(preset, data, mask, N)), features(device_recipe(preset, data, mask, N))
    distances = {name: round(ks(cpu[name], device[name]), 3) for name in cpu}
    assert max(distances.values()) < KS_LIMIT, distances
    # one batch's draws are its images', not the batch's: some of its images are mirrored, some not
    flipped = device["red left - right"][:50] > 0  # the red corner is top left: > 0 unless mirrored
    assert 10 < flipped.sum() < 40, flipped.sum()
    if augment == "real" and not background_prob:  # and a tenth of them, not all or none, are grey (a background would colour them)
        grey = device["saturation"].reshape(-1, 50) < 3
        assert 0.04 < grey.mean() < 0.18 and grey.mean(axis=1).max() < 0.5, grey.sum(axis=1)


def test_pastes_apply_as_on_the_cpu():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 3, 16, 16), dtype=np.uint8)
    labels = np.array([1, 2] * 6)
    masks = [(rng.random((16, 16)) > 0.5).astype(np.float32) if i % 3 else None for i in range(12)]
    pairs = composite_pairs(DEFAULT_CLASSES)
    expected, expected_labels = paste_figures(pixels, labels, masks, pairs, 0.7, np.random.default_rng(3))
    plan = paste_plan(labels, [m is not None for m in masks], pairs, 0.7, 16, np.random.default_rng(3))
    stacked = torch.from_numpy(np.stack([m if m is not None else np.zeros((16, 16), np.float32) for m in masks]))[:, None]
    got, got_labels = paste(torch.from_numpy(pixels).float(), stacked, labels, plan)
    assert len(plan) >= 3 and np.array_equal(got_labels, expected_labels)
    assert np.abs(got.numpy() - expected).max() <= 1


def test_unreadable_files_fail_alike_on_both_paths(tmp_path):
    """The zoo, a JPEG whose scan the decoder refuses (the batch falls back to Pillow one by one)
    and good JPEGs: the same images are usable on both paths, with the CPU path's reasons."""
    zoo = write_zoo(str(tmp_path))
    good = jpeg(photo(120, 90), 1)
    sos = good.index(b"\xff\xda")
    (tmp_path / "broken_scan.jpg").write_bytes(good[:sos] + b"\xff\xda\x00\x02" + good[-2:])
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "turned.jpg").write_bytes(jpeg(photo(90, 120), 6))
    paths = np.array(sorted(str(tmp_path / name) for name in [*zoo, "broken_scan.jpg", "good.jpg", "turned.jpg"]), dtype=object)
    batch = {"path": paths, "label": np.zeros(len(paths), np.int64), "mask": np.full(len(paths), "", dtype=object)}
    preset, fs = TrainPreset(SIZE, "real"), LocalFileSystem()
    cpu = load_training_batch(batch, preset, [fs], {}, 0.0)
    rows = read_training_for_device(batch, preset, [fs], masks=False)
    device = DeviceTrainPreset(preset, CPU)
    errors = np.array(rows["error"], dtype=object)
    out = device({**rows, "error": errors})
    assert out["ok"].numpy().tolist() == cpu["ok"].tolist()
    assert out["image"].shape == (len(paths), 3, SIZE, SIZE)
    for path, reason in zip(paths, errors):
        try:
            preset.transform(read_file(fs, path)[0])
            expected = ""
        except ImageError as e:
            expected = str(e)
        if path.endswith("broken_scan.jpg"):
            assert reason == "" and expected  # found by the device decoder's fallback, not by the reading task
        else:
            assert reason == expected, path
    assert not out["ok"][list(paths).index(str(tmp_path / "broken_scan.jpg"))]


def test_camera_artefacts_are_drawn_alike():
    """`degrade` alone, on grain at 128 px where blur and compression show most: N draws per path."""
    size = 128
    grain = np.random.default_rng(0).normal(128, 40, (3, size, size)).clip(0, 255).astype(np.uint8)
    preset, rng = TrainPreset(size, "real"), np.random.default_rng(1)
    cpu = np.stack([preset.degrade(grain, rng) for _ in range(N)])
    rng, batch = np.random.default_rng(2), torch.from_numpy(np.repeat(grain[None], 50, 0)).float()
    device = np.concatenate([degrade(batch.clone(), size, rng).round().clamp(0, 255).to(torch.uint8).numpy() for _ in range(N // 50)])
    cpu_detail, device_detail = features(cpu)["fine detail"], features(device)["fine detail"]
    assert ks(cpu_detail, device_detail) < KS_LIMIT
    # the three steps each leave their own share untouched: 0.7 * 0.7 * 0.5 of the images keep their grain
    untouched = np.mean(np.all(device == grain, axis=(1, 2, 3)))
    assert abs(untouched - 0.245) < 0.08, untouched
