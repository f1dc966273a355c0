"""What training streams: roots with sampling weights, classes a root may lack, and the loss weights that follow the pasting."""


import numpy as np
import pytest

from cgi2real.core.classes import DEFAULT_CLASSES, composite_pairs
from cgi2real.formats.class_folders import PASTE_BATCH, LabeledImages, TrainingData
from cgi2real.imaging.presets import paste_figures
from cgi2real.pipelines.batches import draw_rows
from cgi2real.pipelines.datasets import file_rows
from cgi2real.storage.locations import locate


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
