"""Ray Data map functions: file rows in, decoded (or device-bound) image batches out, one row per file."""

import numpy as np

from cgi2real.imaging.gpu_eval import device_orientation
from cgi2real.imaging.gpu_train import NO_BOX, read_for_training
from cgi2real.imaging.presets import ImageError, image_errors, paste_figures
from cgi2real.storage.locations import is_unavailable
from cgi2real.storage.reads import read_file, reader_pool


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
    for i, (pixels, figure, error) in enumerate(reader_pool().map(augment, range(len(paths)))):
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
    images, errors = _read_images(batch["path"], batch["size"], preset, [fs] * len(batch["path"]), reader_pool().map)
    return {"path": batch["path"], "image": images, "error": errors}


def read_for_device(batch: dict[str, np.ndarray], preset, fs) -> dict[str, np.ndarray]:
    """Batch {path, size} -> {path, payload, orientation, error}: the CPU stage of `--decode device`.

    JPEGs the device decoder takes pass on as their bytes, with their EXIF orientation (1-8).
    Any other file is decoded here by the CPU `preset`, as `decode_for_labeling` would: its
    payload is the uint8 (3, S, S) pixels' bytes and its orientation 0. An unreadable file has an
    empty payload and its reason in `error`, as on the CPU path.
    """
    rows = list(reader_pool().map(lambda path, size: _device_row(fs, path, size, preset), batch["path"], batch["size"]))
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
    rows = list(reader_pool().map(lambda fs, path: _device_row(fs, path, None, preset), files, batch["path"]))
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

    rows = list(reader_pool().map(read, range(len(batch["path"]))))
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


def decode_target(batch: dict[str, np.ndarray], preset, fs) -> dict[str, np.ndarray]:
    """{path, size, index} -> {image, index, ok}: the labeling decoder, with only numeric columns kept."""
    decoded = decode_for_labeling(batch, preset, fs)
    return {"image": decoded["image"], "index": np.asarray(batch["index"], dtype=np.int64), "ok": decoded["error"] == ""}


def augment_target(batch: dict[str, np.ndarray], preset, filesystems) -> dict[str, np.ndarray]:
    """{path, label (the image's index), mask, root} -> {image, index, ok}: the training decoder, without pasting."""
    out = load_training_batch(batch, preset, filesystems, {}, 0.0)
    return {"image": out["image"], "index": out["label"], "ok": out["ok"]}
