"""What training streams: roots with sampling weights, classes a root may lack, and the loss weights that follow the pasting."""

import os

import numpy as np
import pytest

from cgi2real.core.classes import DEFAULT_CLASSES, composite_pairs
from cgi2real.core.config import TrainConfig
from cgi2real.core.errors import InputError
from cgi2real.formats.class_folders import LabeledImages
from cgi2real.imaging.presets import paste_figures
from cgi2real.pipelines.batches import draw_rows
from cgi2real.pipelines.datasets import PASTE_BATCH, TrainingData, file_rows
from cgi2real.stages.train import prepare_inputs
from cgi2real.storage.locations import locate


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
    with pytest.raises(InputError, match=r"--paste-prob 2: expected between 0 and 1"):
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
