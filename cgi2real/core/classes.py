"""Class taxonomy: default classes, folder-name aliases and which files count as images."""

import re

from cgi2real.core.errors import InputError

# Alphabetical, as class-folder loaders order them; a package stores its own order.
DEFAULT_CLASSES = ("both", "horse", "human")

# Folder names that mean one of the default classes (compared case-insensitively).
ALIASES = {"horses": "horse", "humans": "human", "person": "human", "people": "human"}

# A class whose images show one of each of two others: pasting a human into a horse image makes `both`.
COMPOSITES = {"both": ("horse", "human")}

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
MASKS_FOLDER = "_masks"  # figure masks of a labeled dataset, beside its class folders: not images to label

# Class names become Parquet columns (p_<class>) and folder names: keep them plain.
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def parse_classes(text: str | None, least: int = 2) -> tuple[str, ...]:
    """Parse a comma-separated class list (None: the default classes); a model needs two classes,
    the renderer one (`least`)."""
    if text is None:
        return DEFAULT_CLASSES
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if len(names) < least:
        raise InputError(f"--classes {text!r}: expected at least {least} comma-separated names")
    for name in names:
        if not _CLASS_NAME.match(name):
            raise InputError(
                f"invalid class name {name!r}: use letters, digits, '_' and '-' only"
            )
    lowered = [name.lower() for name in names]
    if len(set(lowered)) != len(names):
        raise InputError(f"--classes has a repeated name: {text!r}")
    return names


def class_for_folder(folder: str, classes: tuple[str, ...]) -> str | None:
    """The class a folder name stands for (exact name or alias, any case), or None."""
    by_lower = {name.lower(): name for name in classes}
    key = folder.lower()
    if key in by_lower:
        return by_lower[key]
    alias = ALIASES.get(key)
    return by_lower.get(alias) if alias else None


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image extensions (any case)."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def composite_pairs(classes: tuple[str, ...]) -> dict[tuple[int, int], int]:
    """(recipient, donor) class indices -> the composite class index, for the COMPOSITES in `classes`."""
    pairs = {}
    for composite, (a, b) in COMPOSITES.items():
        if {composite, a, b} <= set(classes):
            i, j, k = classes.index(a), classes.index(b), classes.index(composite)
            pairs[(i, j)] = pairs[(j, i)] = k
    return pairs


def expected_after_pasting(drawn: dict[str, float], donors: dict[str, float], paste_prob: float, batch_size: int) -> dict[str, float]:
    """Expected images per class once cut-and-paste has relabeled some, from those `drawn` per class
    and the `donors` among them (images with a figure mask).

    An image of a recipient class (horse) becomes the composite (both) with `paste_prob` times the
    chance that its batch of `batch_size` rows holds a masked figure of the donor class (human).
    """
    classes = tuple(drawn)
    total, totals = sum(drawn.values()), dict(drawn)
    for (recipient, donor), result in composite_pairs(classes).items():
        share = donors[classes[donor]] / total if total else 0.0  # of a batch's other rows, on average
        moved = paste_prob * drawn[classes[recipient]] * (1 - (1 - share) ** (batch_size - 1))
        totals[classes[recipient]] -= moved
        totals[classes[result]] += moved
    return totals


def class_weights(counts: dict[str, int], power: float = 1.0) -> dict[str, float]:
    """Loss weights (n / (k * n_c)) ** power: inverse frequency at power 1, its square root at 0.5
    (a rare class from one source then weighs less than its share says); a balanced set gets 1.0 everywhere."""
    total, k = sum(counts.values()), len(counts)
    return {name: ((total / (k * n)) ** power if n else 0.0) for name, n in counts.items()}
