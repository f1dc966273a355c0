"""Image folders: labeled class folders for training, unlabeled trees for labeling, and reading.

A labeled dataset is a folder (local or s3://) with one sub-folder per class; sub-folder names
may be aliases (see classes.py). Files whose extension is not an image's are skipped and counted.
An unlabeled source is any folder, scanned recursively with the same extension rule.

A labeled dataset may hold figure masks in `_masks/<class>/<image stem>.png` (8-bit, 255 where
a horse or person is), as `cgi2real synth` writes them; training uses them for random
backgrounds and cut-and-paste mixing. Images without a mask are used as they are.
"""

import random
from collections import Counter
from dataclasses import dataclass, field, replace

from cgi2real.core.classes import MASKS_FOLDER, class_for_folder, expected_after_pasting, is_image_name
from cgi2real.core.errors import InputError
from cgi2real.storage.listing import list_images
from cgi2real.storage.locations import Location, locate


@dataclass(frozen=True)
class LabeledImages:
    """The image files of a labeled dataset, with class indices into `classes`."""

    root: Location
    classes: tuple[str, ...]
    paths: tuple[str, ...]  # paths as the filesystem takes them (see storage.Location)
    labels: tuple[int, ...]
    skipped: int = 0  # files that are not images
    masks: tuple[str, ...] | None = None  # per image: its figure mask's path, or "" for none

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self, masked_only: bool = False) -> dict[str, int]:
        """Images per class (only those with a figure mask if `masked_only`)."""
        masks = self.masks or ("",) * len(self.labels)
        counts = Counter(label for label, mask in zip(self.labels, masks) if mask or not masked_only)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def masked(self) -> int:
        return sum(1 for m in self.masks or () if m)

    def rows(self) -> list[dict]:
        masks = self.masks or ("",) * len(self.paths)
        return [{"path": p, "label": l, "mask": m} for p, l, m in zip(self.paths, self.labels, masks)]

    def subset(self, indices: list[int]) -> "LabeledImages":
        pick = lambda values: tuple(values[i] for i in indices)  # noqa: E731
        return replace(self, paths=pick(self.paths), labels=pick(self.labels), masks=self.masks and pick(self.masks), skipped=0)


def scan_labeled_dataset(
    uri: str, classes: tuple[str, ...], s3_endpoint: str | None = None, require_every_class: bool = True,
    classes_from: str = "pass --classes to change them",
) -> LabeledImages:
    """List a class-folder dataset; refuse a missing root, unknown folders and (if required) empty classes."""
    root = locate(uri, s3_endpoint)
    if not root.is_dir():
        raise InputError(f"dataset {root.uri} does not exist or is not a folder")
    prefix = root.path.rstrip("/") + "/"
    paths, labels, unknown, skipped, mask_paths = [], [], set(), 0, set()
    for info in root.list_files():
        relative = info.path[len(prefix):]
        if "/" not in relative:  # a file directly in the root belongs to no class
            skipped += 1
            continue
        folder = relative.split("/", 1)[0]
        if folder == MASKS_FOLDER:
            mask_paths.add(info.path)
            continue
        name = class_for_folder(folder, classes)
        if name is None:
            unknown.add(folder)
        elif is_image_name(info.base_name):
            paths.append(info.path)
            labels.append(classes.index(name))
        else:
            skipped += 1
    if unknown:
        raise InputError(
            f"dataset {root.uri} has folders that are not classes: {', '.join(sorted(unknown))} "
            f"(classes: {', '.join(classes)}; {classes_from})"
        )
    masks = tuple(_mask_path(prefix, p) for p in paths)
    masks = tuple(m if m in mask_paths else "" for m in masks) if mask_paths else None
    images = LabeledImages(root, tuple(classes), tuple(paths), tuple(labels), skipped, masks)
    empty = [name for name, n in images.class_counts().items() if n == 0]
    if not images.paths:
        raise InputError(f"dataset {root.uri} has no images in class folders ({', '.join(classes)})")
    if require_every_class and empty:
        raise InputError(
            f"dataset {root.uri} has no images of class {', '.join(empty)} "
            f"(found {_describe_counts(images)}); pass --classes to train on other classes"
        )
    return images


def _mask_path(prefix: str, path: str) -> str:
    stem = path[len(prefix):].rsplit(".", 1)[0]
    return f"{prefix}{MASKS_FOLDER}/{stem}.png"


def _describe_counts(images: LabeledImages) -> str:
    return ", ".join(f"{name} {n}" for name, n in images.class_counts().items())


def stratified_split(images: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """Split into (train, val) with `fraction` of each class in val, the same for the same seed.

    Every class with at least two images keeps at least one image on each side.
    """
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1, got {fraction}")
    rng = random.Random(seed)
    train_idx, val_idx = [], []
    for label in range(len(images.classes)):
        members = [i for i, l in enumerate(images.labels) if l == label]
        rng.shuffle(members)
        n_val = min(max(round(len(members) * fraction), 1), len(members) - 1) if len(members) > 1 else 0
        val_idx += members[:n_val]
        train_idx += members[n_val:]

    return images.subset(sorted(train_idx)), images.subset(sorted(val_idx))


def split_record(train: LabeledImages, val: LabeledImages) -> dict:
    """A root's held-out split as a checkpoint stores it: its files, relative to the root, on each side."""
    prefix = train.root.path.rstrip("/") + "/"
    return {"uri": train.root.uri, "train": [p[len(prefix):] for p in train.paths], "val": [p[len(prefix):] for p in val.paths]}


@dataclass(frozen=True)
class KeptSplit:
    """A root split as a resumed run's checkpoint says, over the files there now."""

    train: LabeledImages
    val: LabeledImages
    new: int  # files the run has not seen: training only
    gone: int  # training files of the run that are no longer there


def reuse_split(images: LabeledImages, record: dict) -> KeptSplit:
    """Split `images` as `record` (`split_record`) did: the same validation files, the rest for training.

    Refuses when a validation file is gone (or moved to another class folder): the accuracies of
    the run's epochs would no longer be comparable, and the best epoch could not be picked fairly.
    """
    prefix = images.root.path.rstrip("/") + "/"
    index = {p[len(prefix):]: i for i, p in enumerate(images.paths)}
    gone = [name for name in record["val"] if name not in index]
    if gone:
        raise InputError(
            f"{len(gone)} validation file(s) of the run are gone from {images.root.uri} (e.g. {gone[0]}); "
            "restore them to resume, or start a new run with another --name"
        )
    val = [index[name] for name in record["val"]]
    held, seen = set(val), set(record["train"]) | set(record["val"])
    train = [i for i in range(len(images)) if i not in held]
    new = sum(1 for name in index if name not in seen)
    return KeptSplit(images.subset(train), images.subset(sorted(val)), new, len(record["train"]) - (len(train) - new))


@dataclass(frozen=True)
class ImageFiles:
    """The image files under an unlabeled source, with their sizes from the listing."""

    root: Location
    paths: tuple[str, ...]  # paths as the filesystem takes them (see storage.Location)
    sizes: tuple[int, ...]
    skipped: int = 0  # files that are not images

    def __len__(self) -> int:
        return len(self.paths)


def scan_image_files(uri: str, s3_endpoint: str | None = None) -> ImageFiles:
    """List every image file under a folder or s3:// prefix (or a single image file); refuse none.

    Figure masks in `_masks/` folders (see MASKS_FOLDER) are not images to label: they are skipped.
    """
    source = list_images(uri, s3_endpoint)
    rows = source.take_rows()
    return ImageFiles(source.root, tuple(rows.column("path").to_pylist()), tuple(rows.column("size").to_pylist()), source.skipped)


PASTE_BATCH = 32  # rows per training map batch: cut-and-paste takes its donors from the same batch


@dataclass
class TrainingData:
    """What one run trains and validates on: per root, its images, weight and held-out part."""

    train: list[LabeledImages]  # one per --data root
    val: list[LabeledImages]  # one per root (its held-out split), or the one --val dataset
    weights: list[float]  # per training root: times each image is drawn per epoch
    held_out: bool = True  # val is split off the roots (False: a separate --val dataset)
    notes: list[str] = field(default_factory=list)  # what resuming found changed in the data

    def per_epoch(self, paste_prob: float = 0.0, batch_size: int = PASTE_BATCH) -> dict[str, float]:
        """Expected images per class in one epoch: drawn, then relabeled by the pasting that can happen.

        An image of a recipient class (horse) becomes the composite (both) with `paste_prob` times
        the chance that its batch of `batch_size` rows holds a masked figure of the donor class
        (human) to paste in: without masks there is no pasting. The loss's class weights come from
        these counts, so they follow the labels the loss will actually see.
        """
        classes = self.train[0].classes
        drawn, donors = dict.fromkeys(classes, 0.0), dict.fromkeys(classes, 0.0)
        for images, weight in zip(self.train, self.weights):
            for name, n in images.class_counts().items():
                drawn[name] += weight * n
            for name, n in images.class_counts(masked_only=True).items():
                donors[name] += weight * n
        return expected_after_pasting(drawn, donors, paste_prob, batch_size)

    def counts(self) -> dict:
        """Class counts for the package summary: totals and per root (with weight and masks)."""
        val_by_root = self.val if self.held_out else [None] * len(self.train)
        return {
            "train": sum_counts(self.train),
            "val": sum_counts(self.val),
            "roots": [
                {"uri": images.root.uri, "weight": weight, "train": images.class_counts(), "masks": images.masked,
                 **({"val": val.class_counts()} if val is not None else {})}
                for images, weight, val in zip(self.train, self.weights, val_by_root)
            ],
        }

    def split(self) -> dict | None:
        """The held-out split as a checkpoint keeps it (None with a separate --val dataset)."""
        return {"roots": [split_record(t, v) for t, v in zip(self.train, self.val)]} if self.held_out else None


def sum_counts(parts: list[LabeledImages]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for images in parts:
        for name, n in images.class_counts().items():
            totals[name] = totals.get(name, 0) + n
    return totals
