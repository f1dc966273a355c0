"""The Ray Data map functions without Ray: rows drawn by their keep probability, augmented training batches, and 300 mutated files that each keep one row."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cgi2real.core.classes import DEFAULT_CLASSES, composite_pairs
from cgi2real.formats.class_folders import scan_labeled_dataset
from cgi2real.imaging.presets import TrainPreset
from cgi2real.pipelines.batches import draw_rows, load_training_batch
from tests.fuzz_images import write

BOTH, HORSE, HUMAN = range(3)


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


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


FILES = 300


PEAK_GROWTH_KIB = 400 * 1024  # over the warmed-up process; the 20000x1 strip alone took 1.6 GB before


@pytest.mark.slow  # 8-14 s: kept out of the quick suite, run by CI
def test_mutated_files_give_one_row_each_with_bounded_memory(tmp_path):
    paths = write(str(tmp_path / "fuzz"), FILES)
    run = subprocess.run([sys.executable, "-m", "tests.fuzz_images", str(tmp_path / "fuzz")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["files"] == len(paths) == FILES
    labeled = result["labeled"]
    assert [row["path"] for row in labeled] == paths  # one row per file, in order, none dropped
    for row in labeled:
        assert (row["error"] == "") or row["error"].split(":")[0] in {"not an image", "truncated", "too large", "cannot decode", "empty file"}, row
    reasons = {row["error"].split(":")[0] for row in labeled}
    assert "" in reasons and len(reasons) >= 3, reasons  # the mutants reach both usable and several failure paths
    assert len(result["trained"]) == FILES and 0 < sum(result["trained"]) < FILES  # each kept or skipped-and-counted
    growth = result["peak_kib"] - result["baseline_kib"]
    assert growth < PEAK_GROWTH_KIB, f"peak memory grew by {growth // 1024} MiB"
