"""The CGI -> real recipe without Ray: masks, random backgrounds, pasting, photo artefacts,
several data roots with sampling weights, calibration and abstention."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cgi2real.classes import DEFAULT_CLASSES, composite_pairs
from cgi2real.config import TrainConfig
from cgi2real.data import PASTE_BATCH, LabeledImages, draw_rows, file_rows, load_training_batch, scan_image_files, scan_labeled_dataset
from cgi2real.errors import InputError
from cgi2real.evaluate import abstention, calibration, confusion_matrix, reliability_png
from cgi2real.presets import TrainPreset, blend, paste_figures, random_background
from cgi2real.synth.scenes import render_scene
from cgi2real.storage import locate
from cgi2real.train import TrainingData, prepare_inputs

BOTH, HORSE, HUMAN = range(3)


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


def test_render_mask_covers_exactly_the_figure():
    rendering = render_scene("horse", 3, 96)
    mask = np.asarray(rendering.mask, np.float32) / 255
    assert rendering.mask.size == rendering.image.size == (96, 96)
    assert abs(mask.mean() - rendering.info["figures"][0]["share"]) < 0.01
    assert 0 < (mask > 0.5).mean() < 1


def test_synth_writes_a_mask_per_image_and_the_scan_pairs_them(image_root):
    root = image_root(2, 80)
    images = scan_labeled_dataset(root, DEFAULT_CLASSES)  # _masks is not taken for a class folder
    assert len(images) == 6 and images.masked == 6
    for path, mask in zip(images.paths, images.masks):
        assert os.path.basename(mask) == os.path.basename(path).replace(".jpg", ".png") and "/_masks/" in mask
        assert Image.open(mask).mode == "L"
    unlabeled = scan_image_files(root)  # labeling a rendered folder labels the images, not their masks
    assert len(unlabeled) == 6 and unlabeled.skipped == 6 and all(p.endswith(".jpg") for p in unlabeled.paths)
    os.remove(images.masks[0])
    assert scan_labeled_dataset(root, DEFAULT_CLASSES).masks[0] == ""


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
    with pytest.raises(ValueError, match="augment 'strong'"):
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


def test_rows_are_drawn_by_their_keep_probability_anew_each_time():
    batch = {"path": np.array([f"{i}.jpg" for i in range(2000)], dtype=object), "keep": np.array([1.0] * 1000 + [0.3] * 1000)}
    first, second = draw_rows(batch), draw_rows(batch)
    assert set(first["path"][:1000]) == {f"{i}.jpg" for i in range(1000)}
    assert 230 < len(first["path"]) - 1000 < 370 and 230 < len(second["path"]) - 1000 < 370
    assert set(first["path"][1000:]) != set(second["path"][1000:])
    assert len(draw_rows({**batch, "keep": np.zeros(2000)})["path"]) == 0


def test_training_batch_augments_with_masks_and_pastes(image_root):
    images = scan_labeled_dataset(image_root(4, 96), DEFAULT_CLASSES)
    rows = images.rows()
    batch = {key: np.array([r[key] for r in rows], dtype=object) for key in ("path", "mask")}
    batch["label"] = np.array([r["label"] for r in rows])
    batch["root"] = np.zeros(len(rows), np.int64)
    out = load_training_batch(batch, TrainPreset(80, "real", 0.5), [images.root.fs], composite_pairs(DEFAULT_CLASSES), 1.0)
    assert out["image"].shape == (12, 3, 80, 80) and out["ok"].all()
    assert (out["label"] == BOTH).all()  # every horse and human image got a figure of the other pasted in
    out = load_training_batch(batch, TrainPreset(80, "basic"), [images.root.fs], composite_pairs(DEFAULT_CLASSES), 0.0)
    assert out["label"].tolist() == batch["label"].tolist()
    batch["path"] = batch["path"].copy()
    batch["path"][0] = batch["path"][0] + ".gone"
    assert not load_training_batch(batch, TrainPreset(80), [images.root.fs], {}, 0.0)["ok"][0]


def test_several_roots_weights_and_per_root_counts(image_root, tmp_path):
    synth, other = image_root(10, 80), image_root(5, 80, seed=4)
    cfg = TrainConfig(data=(synth, other), data_weights=(1.0, 0.4), out=str(tmp_path / "pkg"), weights="none", image_size=80, batch_size=4)
    data = prepare_inputs(cfg)
    assert data.per_epoch() == {"both": pytest.approx(8 + 0.4 * 4), "horse": pytest.approx(9.6), "human": pytest.approx(9.6)}
    counts = data.counts()
    assert counts["train"] == {"both": 12, "horse": 12, "human": 12} and counts["val"] == {"both": 3, "horse": 3, "human": 3}
    assert [r["weight"] for r in counts["roots"]] == [1.0, 0.4]
    assert counts["roots"][1]["train"] == {"both": 4, "horse": 4, "human": 4} and counts["roots"][1]["masks"] == 12
    for weights, message in [((1.0,), "one weight >= 0 per --data root"), ((0.0, 0.0), "not all 0"), ((1.0, -1.0), "one weight")]:
        with pytest.raises(InputError, match=message):
            prepare_inputs(TrainConfig(data=(synth, other), data_weights=weights, out=str(tmp_path / "p"), weights="none", image_size=80))
    with pytest.raises(InputError, match="--paste-prob must be between 0 and 1"):
        prepare_inputs(TrainConfig(data=(synth,), out=str(tmp_path / "p"), weights="none", image_size=80, paste_prob=2))


def test_a_root_may_lack_a_class_that_another_root_has(image_root, tmp_path):
    full = image_root(6, 80)
    no_both = tmp_path / "no_both"
    for name in ("horse", "human"):
        os.makedirs(no_both / name)
        for f in os.listdir(os.path.join(full, name)):
            os.link(os.path.join(full, name, f), no_both / name / f)
    data = prepare_inputs(TrainConfig(data=(str(no_both), full), out=str(tmp_path / "pkg"), weights="none", image_size=80, batch_size=4))
    assert data.counts()["roots"][0]["train"]["both"] == 0
    with pytest.raises(InputError, match="no images of class both in the training data"):
        prepare_inputs(TrainConfig(data=(str(no_both),), out=str(tmp_path / "pkg"), weights="none", image_size=80))


def test_calibration_error_and_abstention_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]], np.float32)
    labels = np.array([0, 1, 1, 2])
    fit = calibration(probs, labels)
    # bin 0.9: accuracy 1/2, confidence 0.9; bin 0.6: accuracy 1, confidence 0.6 -> ECE = 0.5*0.4 + 0.5*0.4
    assert fit["ece"] == pytest.approx(0.4, abs=1e-6)
    assert [b["n"] for b in fit["bins"]] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert abstention(probs, labels, 0.7) == {"threshold": 0.7, "covered": 2, "coverage": 0.5, "accuracy": 0.5}
    assert abstention(probs, labels, 0.95)["accuracy"] is None
    assert confusion_matrix(probs, labels, 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    perfect = calibration(np.eye(3, dtype=np.float32), np.arange(3))
    assert perfect["ece"] == 0.0
    report = {"ece": fit["ece"], "n": 4, "calibration": fit["bins"]}
    assert Image.open(io.BytesIO(reliability_png(report, "toy"))).format == "PNG"


def root_of(counts: dict[str, int], masked: dict[str, int], name: str) -> LabeledImages:
    """A listed root (no files needed): `counts` images per class, the first `masked[c]` of each with a mask."""
    paths, labels, masks = [], [], []
    for label, name_ in enumerate(DEFAULT_CLASSES):
        for i in range(counts.get(name_, 0)):
            paths.append(f"/{name}/{name_}/{i}.jpg")
            labels.append(label)
            masks.append(f"/{name}/_masks/{name_}/{i}.png" if i < masked.get(name_, 0) else "")
    return LabeledImages(locate("/"), DEFAULT_CLASSES, tuple(paths), tuple(labels), 0, tuple(masks))


def simulated_labels(data: TrainingData, paste_prob: float, epochs: int = 60) -> dict[str, float]:
    """The labels the loss sees per epoch, on average, made the way training makes them: rows drawn
    by weight, shuffled, cut into batches of PASTE_BATCH, relabeled by `paste_figures` within each."""
    rng = np.random.default_rng(0)
    rows = file_rows(data.train, data.weights)
    totals = np.zeros(len(DEFAULT_CLASSES))
    for _ in range(epochs):
        batch = {key: np.array([r[key] for r in rows], dtype=object) for key in ("label", "mask", "keep")}
        drawn = draw_rows(batch)
        order = rng.permutation(len(drawn["label"]))
        for start in range(0, len(order), PASTE_BATCH):
            pick = order[start:start + PASTE_BATCH]
            labels = drawn["label"][pick].astype(np.int64)
            figures = [np.ones((2, 2), np.float32) if m else None for m in drawn["mask"][pick]]
            _, labels = paste_figures(np.zeros((len(pick), 3, 2, 2), np.uint8), labels, figures, composite_pairs(DEFAULT_CLASSES), paste_prob, rng)
            totals += np.bincount(labels, minlength=len(DEFAULT_CLASSES))
    return dict(zip(DEFAULT_CLASSES, totals / epochs))


@pytest.mark.parametrize(
    "roots",
    [
        # horse_or_human/train (no masks, no both) + a photo root with 26 `both` images: nothing can be pasted
        [({"horse": 500, "human": 527}, {}, 1.0), ({"both": 26}, {}, 1.0)],
        # rendered images with masks + unmasked photos drawn at half weight
        [({"both": 200, "horse": 200, "human": 200}, {"both": 200, "horse": 200, "human": 200}, 1.0), ({"horse": 300, "human": 100}, {}, 0.5)],
        # only a few masked horses: humans get a horse pasted in rarely, horses never a human
        [({"horse": 400, "human": 400, "both": 50}, {"horse": 12}, 1.0)],
    ],
    ids=["no-masks", "mixed", "few-donors"],
)
def test_loss_weights_follow_the_pasting_that_can_happen(roots):
    data = TrainingData([root_of(c, m, f"r{i}") for i, (c, m, _) in enumerate(roots)], [], [w for _, _, w in roots])
    expected, simulated = data.per_epoch(0.25), simulated_labels(data, 0.25)
    for name in DEFAULT_CLASSES:
        assert simulated[name] == pytest.approx(expected[name], rel=0.05, abs=2), (name, expected, simulated)
    if not any(m for _, m, _ in roots):
        assert data.per_epoch(0.25) == data.per_epoch(0.0)  # the old weights put a quarter of horse and human into both
