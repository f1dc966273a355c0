"""Classes, aliases, dataset scanning, splits and class weights (no Ray)."""

import os

import pytest

from cgi2real.core.classes import DEFAULT_CLASSES
from cgi2real.core.errors import InputError
from cgi2real.formats.class_folders import reuse_split, scan_labeled_dataset, split_record, stratified_split


def make_tree(root, layout: dict[str, int], ext=".jpg"):
    for folder, n in layout.items():
        os.makedirs(root / folder, exist_ok=True)
        for i in range(n):
            (root / folder / f"img{i}{ext}").write_bytes(b"x")
    return str(root)


def test_scan_counts_classes_through_aliases_and_skips_other_files(tmp_path):
    root = make_tree(tmp_path, {"Horses": 3, "people": 2, "both": 1})
    (tmp_path / "Horses" / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("top-level file")
    images = scan_labeled_dataset(root, DEFAULT_CLASSES)
    assert images.class_counts() == {"both": 1, "horse": 3, "human": 2}
    assert images.skipped == 2
    assert len(images) == 6
    assert all(DEFAULT_CLASSES[label] in ("both", "horse", "human") for label in images.labels)


def test_scan_refuses_unknown_folders_and_lists_them(tmp_path):
    root = make_tree(tmp_path, {"horse": 1, "human": 1, "both": 1, "cats": 1, "dogs": 2})
    with pytest.raises(InputError, match="cats, dogs"):
        scan_labeled_dataset(root, DEFAULT_CLASSES)
    with pytest.raises(InputError, match="both, horse, human"):
        scan_labeled_dataset(root, ("cats", "dogs"))


def test_custom_classes_pick_their_folders(tmp_path):
    root = make_tree(tmp_path, {"cats": 2, "dogs": 3})
    images = scan_labeled_dataset(root, ("dogs", "cats"))
    assert images.class_counts() == {"dogs": 3, "cats": 2}


def test_scan_refuses_empty_class_missing_root_and_no_images(tmp_path):
    root = make_tree(tmp_path / "a", {"horse": 2, "human": 2, "both": 0})
    with pytest.raises(InputError, match="no images of class both"):
        scan_labeled_dataset(root, DEFAULT_CLASSES)
    assert scan_labeled_dataset(root, DEFAULT_CLASSES, require_every_class=False).class_counts()["both"] == 0
    with pytest.raises(InputError, match="does not exist"):
        scan_labeled_dataset(str(tmp_path / "missing"), DEFAULT_CLASSES)
    empty = make_tree(tmp_path / "b", {"horse": 0})
    with pytest.raises(InputError, match="no images"):
        scan_labeled_dataset(empty, DEFAULT_CLASSES, require_every_class=False)


def test_stratified_split_is_deterministic_and_keeps_every_class(tmp_path):
    images = scan_labeled_dataset(make_tree(tmp_path, {"horse": 50, "human": 20, "both": 5}), DEFAULT_CLASSES)
    train_a, val_a = stratified_split(images, 0.2, seed=1)
    train_b, val_b = stratified_split(images, 0.2, seed=1)
    _, val_c = stratified_split(images, 0.2, seed=2)
    assert val_a.paths == val_b.paths and train_a.paths == train_b.paths
    assert val_a.paths != val_c.paths
    assert val_a.class_counts() == {"both": 1, "horse": 10, "human": 4}
    assert not set(train_a.paths) & set(val_a.paths)
    assert len(train_a) + len(val_a) == len(images)
    with pytest.raises(InputError):
        stratified_split(images, 1.5, seed=0)


def test_a_resumed_split_keeps_its_validation_files_and_sends_new_ones_to_training(tmp_path):
    root = make_tree(tmp_path, {"horse": 100, "human": 20, "both": 5})
    train, val = stratified_split(scan_labeled_dataset(root, DEFAULT_CLASSES), 0.2, seed=1)
    record = split_record(train, val)
    (tmp_path / "horse" / "img_new.jpg").write_bytes(b"x")  # one file more in a class of 100
    (tmp_path / record["train"][-1]).unlink()  # and one training file less
    now = scan_labeled_dataset(root, DEFAULT_CLASSES)
    kept = reuse_split(now, record)
    assert kept.val.paths == val.paths  # not one validation image moved
    assert kept.new == 1 and kept.gone == 1 and str(tmp_path / "horse" / "img_new.jpg") in kept.train.paths
    assert len(kept.train) + len(kept.val) == len(now)
    redone_train, redone_val = stratified_split(now, 0.2, seed=1)
    assert redone_val.paths != val.paths  # what recomputing the split would have done
    (tmp_path / record["val"][0]).unlink()
    with pytest.raises(InputError, match=f"1 validation file\\(s\\) of the run are gone .*{record['val'][0]}"):
        reuse_split(scan_labeled_dataset(root, DEFAULT_CLASSES), record)

