"""`--decode device`: JPEG bytes decoded and framed on the model's device (here its CPU code path)
give the CPU preset's pixels, the same rows and the same error rows."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from cgi2real.core.config import GEOMETRIES
from cgi2real.formats.package import read_model_package
from cgi2real.imaging.gpu_eval import DevicePreset, device_orientation, draft_scale
from cgi2real.imaging.presets import EvalPreset
from cgi2real.pipelines.batches import decode_for_labeling, read_for_device
from cgi2real.pipelines.labeler import Labeler
from tests.imaging.test_presets import exif_with_mistyped_tag
from tests.labeling import encode, image_files, make_package, write_zoo

CPU = torch.device("cpu")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with structure at every scale and an asymmetric layout, so any wrong turn or
    misplaced box shows."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, np.float32) + rng.normal(0, 12, (height, width, 3))
    pixels[: height // 5, : width // 3] = (250, 20, 20)  # a red corner: top left, upright
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg(img: Image.Image, orientation: int = 1, **options) -> bytes:
    """`img` stored as a camera would for EXIF `orientation`: the pixels turned the other way."""
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = img.transpose(inverse[orientation]) if orientation in inverse else img
    return encode(stored, "JPEG", quality=95, exif=exif, **options)


def device_pixels(preset: DevicePreset, data: bytes) -> np.ndarray:
    orientation = device_orientation(data)
    assert orientation, "a plain JPEG must go to the device"
    return preset([data], [orientation])[0].numpy().astype(np.int16)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_exif_orientation_and_geometry_matches_the_cpu_preset(geometry):
    size = 64
    img = photo(150, 100)  # not reduced at decode time: min(150, 100) // 73 == 1
    assert draft_scale(150, 100, round(size * 342 / 299)) == 1
    cpu = EvalPreset(size, geometry)
    device = DevicePreset(cpu, CPU)
    for orientation in range(1, 9):
        data = jpeg(img, orientation)
        difference = np.abs(device_pixels(device, data) - cpu(data).numpy().astype(np.int16))
        assert difference.mean() < 0.6 and np.percentile(difference, 99) <= 3, (geometry, orientation, difference.mean())
        if orientation > 1:  # the turn matters: without it the pixels are far apart
            unturned = device([data], [1])[0].numpy().astype(np.int16)
            assert np.abs(unturned - cpu(data).numpy()).mean() > 10, (geometry, orientation)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_large_pictures_are_reduced_as_the_cpu_decoder_reduces_them(geometry):
    size = 64
    cpu = EvalPreset(size, geometry)
    device = DevicePreset(cpu, CPU)
    for width, height, orientation in [(900, 500, 1), (500, 950, 6), (1300, 800, 3), (700, 600, 8)]:
        data = jpeg(photo(width, height, seed=width), orientation)
        assert draft_scale(width, height, round(size * 342 / 299)) > 1
        difference = np.abs(device_pixels(device, data) - cpu(data).numpy().astype(np.int16))
        assert difference.mean() < 2.0, (geometry, width, height, difference.mean())


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_batch_is_framed_in_groups_by_stored_size_as_each_picture_would_be_alone(geometry):
    """Pictures sharing a stored size and orientation are framed in one batched product; groups
    of large pictures go in chunks; rows stay in their places whatever the grouping."""
    sizes = [(150, 100, 1), (120, 90, 6), (150, 100, 1), (150, 100, 6), (120, 90, 6), (150, 100, 1), (900, 500, 3), (150, 100, 1)]
    datas = [jpeg(photo(w, h, seed=k), o) for k, (w, h, o) in enumerate(sizes)]
    orientations = [o for *_, o in sizes]
    device = DevicePreset(EvalPreset(64, geometry), CPU)
    alone = torch.stack([device([d], [o])[0] for d, o in zip(datas, orientations)]).to(torch.int16)
    device.framed_values = 2 * 3 * 100 * 150  # as on a GPU, in chunks of two 150 x 100 pictures
    together = device(datas, orientations).to(torch.int16)
    assert (together - alone).abs().max() <= 1 and (together != alone).float().mean() < 1e-3
    assert all((alone[i] - alone[j]).abs().float().mean() > 5 for i in range(len(datas)) for j in range(i))  # any misplaced row would show


def test_only_plain_jpegs_go_to_the_device(tmp_path):
    img = photo(80, 60)
    whole = jpeg(img, 6)
    assert device_orientation(whole) == 6
    assert device_orientation(encode(img, "JPEG", progressive=True)) == 1
    assert device_orientation(encode(img.convert("L"), "JPEG")) == 1
    assert device_orientation(encode(img, "JPEG", exif=exif_with_mistyped_tag(3))) == 3  # a mistyped other tag, as the CPU path reads it
    assert device_orientation(whole + b"\0\0\0") == 6  # padding after the end marker
    for other in [
        whole[: len(whole) // 2],  # truncated: the CPU decoder names it
        b"",
        b"not an image",
        encode(img, "PNG"),
        encode(img, "WEBP"),
        encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
    ]:
        assert device_orientation(other) is None


def labeler_rows(package: str, folder: str, decode: str) -> dict:
    """{path: (probabilities, error)} from Labeler fed by the reading stage of `decode`."""
    paths = np.array(image_files(folder), object)
    sizes = np.array([os.path.getsize(p) for p in paths])
    config, weights = read_model_package(package)
    labeler = Labeler(config, weights, decode=decode)
    preset = EvalPreset(config["image_size"])
    from pyarrow.fs import LocalFileSystem

    read = read_for_device if decode == "device" else decode_for_labeling
    out = labeler(read({"path": paths, "size": sizes}, preset, LocalFileSystem()))
    return {p: (probs, error) for p, probs, error in zip(out["path"], out["probs"], out["error"])}


@pytest.fixture(scope="module")
def awkward(tmp_path_factory, image_root):
    """Generated renders, the zoo of awkward files, and JPEGs with every EXIF orientation."""
    folder = tmp_path_factory.mktemp("awkward")
    zoo = write_zoo(str(folder / "zoo"))
    for orientation in range(1, 9):
        (folder / f"turned_{orientation}.jpg").write_bytes(jpeg(photo(200, 120, orientation), orientation))
    (folder / "big.jpg").write_bytes(jpeg(photo(1400, 900), 8))
    (folder / "grey.jpg").write_bytes(encode(photo(90, 120).convert("L"), "JPEG"))
    os.symlink(image_root(4, 96), folder / "renders")
    return str(folder), zoo


def test_the_labeler_gives_the_same_rows_and_errors_in_both_modes(tmp_path, awkward):
    folder, zoo = awkward
    package = make_package(str(tmp_path / "pkg"), os.path.join(folder, "renders"), image_size=80)
    cpu, device = labeler_rows(package, folder, "cpu"), labeler_rows(package, folder, "device")
    assert list(cpu) == list(device)
    for path in cpu:
        e_cpu, (p_device, e_device) = cpu[path][1], device[path]
        assert e_cpu == e_device, path
        name = os.path.basename(path)
        if name in zoo:
            assert (e_cpu or None) == zoo[name] or (zoo[name] and zoo[name] in e_cpu), name
        if not e_cpu:
            assert np.isfinite(p_device).all() and abs(p_device.sum() - 1) < 1e-4, path
    labeled = sum(1 for _, e in cpu.values() if not e)
    assert labeled >= len(cpu) - 4  # the zoo's four unreadable files


def test_a_batch_the_device_decoder_refuses_falls_back_to_the_cpu_one_by_one(tmp_path, image_root):
    """A JPEG whose header passes but whose data nvJPEG/libjpeg-turbo refuse: the whole batch goes
    to the CPU preset, which labels the good ones and gives the bad one its usual error row."""
    folder = tmp_path / "images"
    folder.mkdir()
    good = jpeg(photo(120, 90), 1)
    (folder / "a_good.jpg").write_bytes(good)
    sos = good.index(b"\xff\xda")
    broken = good[:sos] + b"\xff\xda\x00\x02" + good[-2:]  # a start of scan with a bad length, then the end marker
    (folder / "b_broken.jpg").write_bytes(broken)
    (folder / "c_good.jpg").write_bytes(jpeg(photo(90, 120, 1), 6))
    assert device_orientation(broken) == 1
    package = make_package(str(tmp_path / "pkg"), image_root(4, 96), image_size=80)
    cpu, device = labeler_rows(package, str(folder), "cpu"), labeler_rows(package, str(folder), "device")
    for path in cpu:
        assert cpu[path][1] == device[path][1], path
    assert cpu[str(folder / "b_broken.jpg")][1]  # an error row, not a label
    assert not cpu[str(folder / "a_good.jpg")][1] and not device[str(folder / "c_good.jpg")][1]
