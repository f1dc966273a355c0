"""Image folders: labeled class folders for training, unlabeled trees for labeling, and reading.

A labeled dataset is a folder (local or s3://) with one sub-folder per class; sub-folder names
may be aliases (see classes.py). Files whose extension is not an image's are skipped and counted.
An unlabeled source is any folder, scanned recursively with the same extension rule.

A labeled dataset may hold figure masks in `_masks/<class>/<image stem>.png` (8-bit, 255 where
a horse or person is), as `cgi2real synth` writes them; training uses them for random
backgrounds and cut-and-paste mixing. Images without a mask are used as they are.
"""

import functools
import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from cgi2real.classes import MASKS_FOLDER, class_for_folder, composite_pairs, is_image_name
from cgi2real.device_augment import NO_BOX, read_for_training
from cgi2real.device_preset import device_orientation
from cgi2real.errors import InputError
from cgi2real.presets import ImageError, image_errors, paste_figures
from cgi2real.sources import list_images
from cgi2real.storage import UNAVAILABLE, FileTooLarge, Location, backoff, first_line, is_transient, is_unavailable, locate, read_whole

# Files larger than this are reported, not read: no image we can use is that big.
MAX_FILE_BYTES = 256 * 2**20
# Reads failing for a transient reason (throttling, 5xx, resets, timeouts) are tried this many
# times (storage.backoff between them); the S3 client has already made up to 3 tries of each
# request. What still fails is "unavailable": not a property of the file.
READ_ATTEMPTS = 4

PASTE_BATCH = 32  # rows per training map batch: cut-and-paste takes its donors from the same batch


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
    uri: str, classes: tuple[str, ...], s3_endpoint: str | None = None, require_every_class: bool = True
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
            f"(classes: {', '.join(classes)}; pass --classes to change them)"
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


def class_weights(counts: dict[str, int], power: float = 1.0) -> dict[str, float]:
    """Loss weights (n / (k * n_c)) ** power: inverse frequency at power 1, its square root at 0.5
    (a rare class from one source then weighs less than its share says); a balanced set gets 1.0 everywhere."""
    total, k = sum(counts.values()), len(counts)
    return {name: ((total / (k * n)) ** power if n else 0.0) for name, n in counts.items()}


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


def read_image(fs, path: str, preset, size: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """Read and preprocess one file: (uint8 pixels, None), or (None, a short reason it failed)."""
    data, error = read_file(fs, path, size)
    return (None, error) if error else preprocess(preset, data)


def preprocess(preset, data: bytes) -> tuple[np.ndarray | None, str | None]:
    """A file's bytes through `preset`: (uint8 pixels, None), or (None, the short reason it failed)."""
    try:
        return preset(data).numpy(), None
    except ImageError as e:
        return None, str(e)


def read_file(fs, path: str, size: int | None = None) -> tuple[bytes | None, str | None]:
    """The bytes of one file, or (None, a short reason it cannot be read).

    Transient failures are retried (READ_ATTEMPTS); a reason starting with UNAVAILABLE says they
    did not clear, and `is_unavailable` tells it from the final ones (file not found, too large, ...).
    """
    if size is not None and size > MAX_FILE_BYTES:
        return None, f"too large: {size} bytes > {MAX_FILE_BYTES}"
    for attempt in itertools.count():
        try:
            return read_whole(fs, path, MAX_FILE_BYTES), None
        except FileTooLarge as e:
            return None, f"too large: {e.size} bytes > {MAX_FILE_BYTES}"
        except Exception as e:  # one file's failure, whatever it is, is that file's alone
            if not is_transient(e):
                return None, _read_error(e)
            if attempt + 1 == READ_ATTEMPTS:
                return None, f"{UNAVAILABLE}: {first_line(e)}"
            backoff(attempt)


def _read_error(error: Exception) -> str:
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


def load_image_batch(batch: dict[str, np.ndarray], preset, filesystems, map_fn=map) -> dict[str, np.ndarray]:
    """Batch {path, label[, root]} -> {image uint8 (B, 3, S, S), label, ok, unavailable}; a Ray Data map function.

    `root` indexes `filesystems` (default: the first). An image that cannot be read or decoded
    gets `ok = False` and zero pixels rather than failing the block; the training loop drops such
    rows and counts them. `unavailable` marks those whose read failed transiently through every
    retry (evaluation refuses to report without them). `map_fn` may be a thread pool's map (PIL releases the GIL while decoding).
    """
    files = _files(batch, filesystems)
    images, errors = _read_images(batch["path"], None, preset, files, map_fn)
    unavailable = np.array([is_unavailable(e) for e in errors], dtype=bool)
    return {"image": images, "label": np.asarray(batch["label"], dtype=np.int64), "ok": errors == "", "unavailable": unavailable}


def draw_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep each row with its probability `keep`, drawn anew on every call (every epoch).

    This is how per-root sampling weights below 1, and the fractional part of others, work. It
    runs before decoding, on file rows, so a batch that loses every row is still a valid block.
    """
    kept = np.random.default_rng().random(len(batch["keep"])) < np.asarray(batch["keep"], dtype=np.float64)
    return {key: np.asarray(values)[kept] for key, values in batch.items()}


def load_training_batch(batch: dict[str, np.ndarray], preset, filesystems, paste_pairs: dict, paste_prob: float) -> dict[str, np.ndarray]:
    """Batch {path, label, mask, root} -> augmented {image, label, ok}; the training map function.

    Every image is augmented with its mask (`TrainPreset.transform`), figures are pasted between
    images (`presets.paste_figures`), and the camera artefacts come last (`TrainPreset.degrade`),
    over pasted figures too.
    """
    rng = np.random.default_rng()
    paths, masks, labels = batch["path"], batch["mask"], np.asarray(batch["label"], dtype=np.int64)
    files = _files(batch, filesystems)
    seeds = rng.integers(2**63, size=len(paths))

    def augment(i: int):
        data, error = read_file(files[i], paths[i])
        if error:
            return None, None, error
        figure = read_file(files[i], masks[i])[0] if masks[i] else None  # a missing mask only means none
        try:
            pixels, figure = preset.transform(data, figure, np.random.default_rng(seeds[i]))
            return pixels, figure, ""
        except ImageError as e:
            return None, None, str(e)

    s = preset.image_size
    images, figures, ok = np.zeros((len(paths), 3, s, s), dtype=np.uint8), [None] * len(paths), np.zeros(len(paths), dtype=bool)
    for i, (pixels, figure, error) in enumerate(_reader_pool().map(augment, range(len(paths)))):
        if not error:
            images[i], figures[i], ok[i] = pixels.numpy(), figure, True
    if paste_prob > 0 and paste_pairs:
        images, labels = paste_figures(images, labels, figures, paste_pairs, paste_prob, rng)
    for i in np.flatnonzero(ok):
        try:
            with image_errors():
                images[i] = preset.degrade(images[i], rng)
        except ImageError:  # counted like an unreadable image: one image never fails the batch
            ok[i] = False
    return {"image": images, "label": labels, "ok": ok}


def _files(batch: dict, filesystems) -> list:
    roots = batch.get("root")
    return [filesystems[0]] * len(batch["path"]) if roots is None else [filesystems[int(r)] for r in roots]


def decode_for_labeling(batch: dict[str, np.ndarray], preset, fs) -> dict[str, np.ndarray]:
    """Batch {path, size} -> {path, image uint8 (B, 3, S, S), error}: the labeling pipeline's CPU stage.

    `error` is "" for a usable image and a short reason otherwise (its pixels are zeros), so
    every file keeps its row.
    """
    images, errors = _read_images(batch["path"], batch["size"], preset, [fs] * len(batch["path"]), _reader_pool().map)
    return {"path": batch["path"], "image": images, "error": errors}


def read_for_device(batch: dict[str, np.ndarray], preset, fs) -> dict[str, np.ndarray]:
    """Batch {path, size} -> {path, payload, orientation, error}: the CPU stage of `--decode device`.

    JPEGs the device decoder takes pass on as their bytes, with their EXIF orientation (1-8).
    Any other file is decoded here by the CPU `preset`, as `decode_for_labeling` would: its
    payload is the uint8 (3, S, S) pixels' bytes and its orientation 0. An unreadable file has an
    empty payload and its reason in `error`, as on the CPU path.
    """
    rows = list(_reader_pool().map(lambda path, size: _device_row(fs, path, size, preset), batch["path"], batch["size"]))
    return {"path": batch["path"], **_columns(rows, ("payload", "orientation", "error"))}


def _device_row(fs, path: str, size: int | None, preset) -> tuple[bytes, int, str]:
    data, error = read_file(fs, path, size)
    if error:
        return b"", 0, error
    orientation = device_orientation(data)
    if orientation:
        return data, orientation, ""
    pixels, error = preprocess(preset, data)
    return (b"", 0, error) if error else (pixels.tobytes(), 0, "")


_COLUMN_TYPES = {"payload": object, "mask": object, "error": object, "orientation": np.int8, "scale": np.int8, "box": np.int32}


def _columns(rows: list[tuple], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {name: np.array([r[k] for r in rows], dtype=_COLUMN_TYPES[name]) for k, name in enumerate(names)}


def read_labeled_for_device(batch: dict[str, np.ndarray], preset, filesystems) -> dict[str, np.ndarray]:
    """Batch {path, label[, root]} -> {payload, orientation, error, label}: `read_for_device` for
    validation images (any root), which `DevicePreset.batch` turns into pixels in the worker."""
    files = _files(batch, filesystems)
    rows = list(_reader_pool().map(lambda fs, path: _device_row(fs, path, None, preset), files, batch["path"]))
    return {**_columns(rows, ("payload", "orientation", "error")), "label": np.asarray(batch["label"], dtype=np.int64)}


def read_training_for_device(batch: dict[str, np.ndarray], preset, filesystems, masks: bool) -> dict[str, np.ndarray]:
    """Batch {path, label, mask, root} -> {payload, orientation, box, scale, mask, label, error}:
    the reading tasks of training with `--decode device` (`device_augment.read_for_training`).

    Figure masks are read only if `masks` (the recipe uses them). A file that cannot be read or
    cropped keeps its row, with its reason in `error`: the worker counts it as unreadable.
    """
    files = _files(batch, filesystems)

    def read(i: int):
        data, error = read_file(files[i], batch["path"][i])
        if error:
            return b"", 0, NO_BOX, 1, b"", error
        figure = read_file(files[i], batch["mask"][i])[0] if masks and batch["mask"][i] else None  # a missing mask only means none
        try:
            return (*read_for_training(preset, data, figure), "")
        except ImageError as e:
            return b"", 0, NO_BOX, 1, b"", str(e)

    rows = list(_reader_pool().map(read, range(len(batch["path"]))))
    return {**_columns(rows, ("payload", "orientation", "box", "scale", "mask", "error")), "label": np.asarray(batch["label"], dtype=np.int64)}


def _read_images(paths, sizes, preset, files, map_fn) -> tuple[np.ndarray, np.ndarray]:
    s = preset.image_size
    images = np.zeros((len(paths), 3, s, s), dtype=np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    sizes = sizes if sizes is not None else [None] * len(paths)
    for i, (pixels, error) in enumerate(map_fn(lambda a: read_image(*a), zip(files, paths, [preset] * len(paths), sizes))):
        if error is None:
            images[i] = pixels
        else:
            errors[i] = error
    return images, errors


def image_dataset(parts: list[LabeledImages], preset, decode: str = "cpu"):
    """A Ray Dataset of validation rows from one or more roots, in order: preset-transformed
    {image, label, ok}, or with decode="device" what `DevicePreset.batch` takes (plus label)."""
    import ray.data

    rows = file_rows(parts)
    ds = ray.data.from_items(rows, override_num_blocks=row_blocks(rows))
    read = read_labeled_for_device if decode == "device" else load_image_batch
    return ds.map_batches(read, fn_kwargs={"preset": preset, "filesystems": [p.root.fs for p in parts]}, batch_size=32)


def training_dataset(parts: list[LabeledImages], preset, weights: list[float], paste_prob: float, decode: str = "cpu"):
    """The training Ray Dataset: re-executed (re-shuffled, re-sampled, re-augmented, re-pasted) each epoch.

    With decode="device" the rows carry JPEG bytes and crop boxes, and the augmentation runs in
    the worker (`device_augment.DeviceTrainPreset`).
    """
    filesystems = [p.root.fs for p in parts]
    if decode == "device":
        masks = preset.background_prob > 0 or (paste_prob > 0 and bool(composite_pairs(parts[0].classes)))
        kwargs = {"preset": preset, "filesystems": filesystems, "masks": masks}
        return training_rows(parts, weights).map_batches(read_training_for_device, fn_kwargs=kwargs, batch_size=PASTE_BATCH)
    kwargs = {"preset": preset, "filesystems": filesystems, "paste_pairs": composite_pairs(parts[0].classes), "paste_prob": paste_prob}
    return training_rows(parts, weights).map_batches(load_training_batch, fn_kwargs=kwargs, batch_size=PASTE_BATCH)


def training_rows(parts: list[LabeledImages], weights: list[float]):
    """The file rows of an epoch, {path, label, mask, root, keep}: a Ray Dataset drawn and shuffled anew each epoch.

    `weights[r]` is how many times, on average, each image of root r is drawn per epoch: 2 repeats
    it, 0.5 draws a new half each epoch (`draw_rows`). The rows are a path and a label each, not
    pixels, so shuffling all of them every epoch is cheap, and an image meets other batch-mates and
    paste donors each time; decoding, after the shuffle, stays streamed.
    """
    import ray.data

    rows = file_rows(parts, weights)
    return ray.data.from_items(rows, override_num_blocks=row_blocks(rows)).random_shuffle().map_batches(draw_rows, batch_size=None)


def file_rows(parts: list[LabeledImages], weights: list[float] | None = None) -> list[dict]:
    """{path, label, mask, root, keep} rows: each image floor(w) times, plus once with keep = frac(w)."""
    rows = []
    for r, (images, weight) in enumerate(zip(parts, weights or [1.0] * len(parts))):
        copies, fraction = int(weight), weight - int(weight)
        for row in images.rows():
            rows += [{**row, "root": r, "keep": 1.0}] * copies + ([{**row, "root": r, "keep": fraction}] if fraction else [])
    return rows


def row_blocks(rows: list) -> int:
    """Blocks for a Ray Dataset of file rows: about 32 rows each, between 2 and 200."""
    return max(2, min(len(rows) // 32, 200))
