"""Class names: aliases of folder names, --classes lists, image extensions; the loss's class weights."""

import pytest

from cgi2real.core.classes import DEFAULT_CLASSES, class_for_folder, class_weights, is_image_name, parse_classes
from cgi2real.core.errors import InputError


def test_aliases_map_folder_names_case_insensitively():
    assert class_for_folder("Horses", DEFAULT_CLASSES) == "horse"
    assert class_for_folder("PEOPLE", DEFAULT_CLASSES) == "human"
    assert class_for_folder("person", DEFAULT_CLASSES) == "human"
    assert class_for_folder("humans", DEFAULT_CLASSES) == "human"
    assert class_for_folder("Both", DEFAULT_CLASSES) == "both"
    assert class_for_folder("cats", DEFAULT_CLASSES) is None
    assert class_for_folder("people", ("cat", "dog")) is None  # alias target not a class


def test_parse_classes_accepts_any_names_and_rejects_bad_lists():
    assert parse_classes(None) == DEFAULT_CLASSES
    assert parse_classes("cat, dog,bird") == ("cat", "dog", "bird")
    for bad in ("cat", "cat,Cat", "cat,d g", ","):
        with pytest.raises(InputError):
            parse_classes(bad)


def test_image_extensions():
    assert all(is_image_name(n) for n in ("a.JPG", "b.jpeg", "c.Png", "d.webp", "e.bmp", "f.GIF"))
    assert not any(is_image_name(n) for n in ("a.txt", "b", ".jpg.txt", "c.tiff"))


def test_class_weights_balance_the_loss():
    weights = class_weights({"both": 117, "horse": 50, "human": 1103})
    assert weights["horse"] > weights["both"] > weights["human"]
    # each class contributes the same total weight: n_c * w_c == n / k
    assert {round(n * weights[c], 6) for c, n in {"both": 117, "horse": 50, "human": 1103}.items()} == {round(1270 / 3, 6)}


def test_class_weights_at_power_half_are_the_square_roots():
    counts = {"both": 29, "horse": 463, "human": 487}
    full, half = class_weights(counts), class_weights(counts, 0.5)
    assert all(abs(half[c] - full[c] ** 0.5) < 1e-12 for c in counts)
    assert half["both"] < full["both"] and half["horse"] > full["horse"]  # gentler on the rare class, both ways
    assert class_weights(counts, 0.0) == {c: 1.0 for c in counts}
