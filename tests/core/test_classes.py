"""Class names: aliases of folder names, --classes lists, image extensions."""

import pytest

from cgi2real.core.classes import DEFAULT_CLASSES, class_for_folder, is_image_name, parse_classes
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
