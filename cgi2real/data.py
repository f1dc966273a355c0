"""Image folders: labeled class folders for training, unlabeled trees for labeling, and reading.

A labeled dataset is a folder (local or s3://) with one sub-folder per class; sub-folder names
may be aliases (see classes.py). Files whose extension is not an image's are skipped and counted.
An unlabeled source is any folder, scanned recursively with the same extension rule.
"""

import functools
import random
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pyarrow.fs as pafs

from cgi2real.classes import IMAGE_EXTENSIONS, class_for_folder, is_image_name
from cgi2real.errors import InputError
from cgi2real.presets import ImageError
from cgi2real.storage import Location, first_line, locate

# Files larger than this are reported, not read: no image we can use is that big.
MAX_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class LabeledImages:
    """The image files of a labeled dataset, with class indices into `classes`."""

    root: Location
    classes: tuple[str, ...]
    paths: tuple[str, ...]  # paths as the filesystem takes them (see storage.Location)
    labels: tuple[int, ...]
    skipped: int = 0  # files that are not images

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def rows(self) -> list[dict]:
        return [{"path": p, "label": l} for p, l in zip(self.paths, self.labels)]


def scan_labeled_dataset(
    uri: str, classes: tuple[str, ...], s3_endpoint: str | None = None, require_every_class: bool = True
) -> LabeledImages:
    """List a class-folder dataset; refuse a missing root, unknown folders and (if required) empty classes."""
    root = locate(uri, s3_endpoint)
    if not root.is_dir():
        raise InputError(f"dataset {root.uri} does not exist or is not a folder")
    prefix = root.path.rstrip("/") + "/"
    paths, labels, unknown, skipped = [], [], set(), 0
    for info in root.list_files():
        relative = info.path[len(prefix):]
        if "/" not in relative:  # a file directly in the root belongs to no class
            skipped += 1
            continue
        folder = relative.split("/", 1)[0]
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
            f"(classes: {', '.join(classes)}; pass --classes to change them)"
        )
    images = LabeledImages(root, tuple(classes), tuple(paths), tuple(labels), skipped)
    empty = [name for name, n in images.class_counts().items() if n == 0]
    if not images.paths:
        raise InputError(f"dataset {root.uri} has no images in class folders ({', '.join(classes)})")
    if require_every_class and empty:
        raise InputError(
            f"dataset {root.uri} has no images of class {', '.join(empty)} "
            f"(found {_describe_counts(images)}); pass --classes to train on other classes"
        )
    return images


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

    def subset(indices: list[int]) -> LabeledImages:
        indices = sorted(indices)
        return replace(
            images, paths=tuple(images.paths[i] for i in indices), labels=tuple(images.labels[i] for i in indices), skipped=0
        )

    return subset(train_idx), subset(val_idx)


def class_weights(counts: dict[str, int]) -> dict[str, float]:
    """Inverse-frequency loss weights, n / (k * n_c): a balanced set gets 1.0 everywhere."""
    total, k = sum(counts.values()), len(counts)
    return {name: (total / (k * n) if n else 0.0) for name, n in counts.items()}


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
    """List every image file under a folder or s3:// prefix (or a single image file); refuse none."""
    root = locate(uri, s3_endpoint)
    info = root.info()
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"source {root.uri} does not exist")
    listing = [info] if info.type == pafs.FileType.File else root.list_files()
    images = [i for i in listing if is_image_name(i.base_name)]
    if not images:
        other = f" ({len(listing)} other files)" if listing else ""
        raise InputError(f"source {root.uri} has no image files{other}; images end in {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return ImageFiles(root, tuple(i.path for i in images), tuple(i.size for i in images), len(listing) - len(images))


def read_image(fs, path: str, preset, size: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """Read and preprocess one file: (uint8 pixels, None), or (None, a short reason it failed)."""
    if size is not None and size > MAX_FILE_BYTES:
        return None, f"too large: {size} bytes > {MAX_FILE_BYTES}"
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        return None, _read_error(e)
    try:
        return preset(data).numpy(), None
    except ImageError as e:
        return None, str(e)


def _read_error(error: OSError) -> str:
    text = str(error)
    if isinstance(error, PermissionError) or "ACCESS_DENIED" in text or "AccessDenied" in text:
        return "permission denied"
    if isinstance(error, FileNotFoundError) or "NOT_FOUND" in text or "NoSuchKey" in text:
        return "file not found"
    return f"cannot read: {first_line(error)}"


@functools.lru_cache(maxsize=1)
def _reader_pool() -> ThreadPoolExecutor:
    # One per process: reading overlaps S3 latency, and PIL releases the GIL while decoding.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="cgi2real-read")


def load_image_batch(batch: dict[str, np.ndarray], preset, fs, map_fn=map) -> dict[str, np.ndarray]:
    """Batch {path, label} -> {image uint8 (B, 3, S, S), label, ok}; a Ray Data map function.

    An image that cannot be read or decoded gets `ok = False` and zero pixels rather than
    failing the block; the training loop drops such rows and counts them. `map_fn` may be a
    thread pool's map (PIL releases the GIL while decoding).
    """
    images, errors = _read_images(batch["path"], None, preset, fs, map_fn)
    return {"image": images, "label": np.asarray(batch["label"], dtype=np.int64), "ok": errors == ""}


def decode_for_labeling(batch: dict[str, np.ndarray], preset, fs) -> dict[str, np.ndarray]:
    """Batch {path, size} -> {path, image uint8 (B, 3, S, S), error}: the labeling pipeline's CPU stage.

    `error` is "" for a usable image and a short reason otherwise (its pixels are zeros), so
    every file keeps its row.
    """
    images, errors = _read_images(batch["path"], batch["size"], preset, fs, _reader_pool().map)
    return {"path": batch["path"], "image": images, "error": errors}


def _read_images(paths, sizes, preset, fs, map_fn) -> tuple[np.ndarray, np.ndarray]:
    s = preset.image_size
    images = np.zeros((len(paths), 3, s, s), dtype=np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    sizes = sizes if sizes is not None else [None] * len(paths)
    for i, (pixels, error) in enumerate(map_fn(lambda ps: read_image(fs, ps[0], preset, ps[1]), zip(paths, sizes))):
        if error is None:
            images[i] = pixels
        else:
            errors[i] = error
    return images, errors


def image_dataset(images: LabeledImages, preset, shuffle: bool, seed: int = 0):
    """A Ray Dataset of decoded, preset-transformed images; re-executed (re-augmented) each epoch.

    With `shuffle`, the rows are shuffled once here, so that every block mixes the classes, and
    the block order is drawn anew each epoch; the trainer adds a local shuffle buffer. A full
    `random_shuffle` would be an all-to-all barrier before each epoch's first batch.
    """
    import ray.data

    rows = images.rows()
    if shuffle:
        random.Random(seed).shuffle(rows)
    blocks = max(2, min(len(rows) // 32, 200))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(load_image_batch, fn_kwargs={"preset": preset, "fs": images.root.fs}, batch_size=32)
