"""Ray Dataset builders: what each stage streams, as file rows mapped by `pipelines.batches`.

Training (`TrainingData`, `training_datasets`): per-root weights drawn anew each epoch, shuffled
file rows, decoded and augmented after the shuffle. Validation and evaluation (`image_dataset`).
Adaptation (`target_dataset`, `augmented_target_dataset`). Ray is imported inside the builders;
labeling's pipeline is `pipelines.labeling`, which a torch-free driver imports.
"""

import numpy as np
import pyarrow as pa

from cgi2real.core.classes import composite_pairs
from cgi2real.core.config import TrainConfig
from cgi2real.formats.class_folders import PASTE_BATCH, ImageFiles, LabeledImages, TrainingData
from cgi2real.imaging.presets import EvalPreset, TrainPreset
from cgi2real.pipelines.batches import (
    augment_target,
    decode_target,
    draw_rows,
    load_image_batch,
    load_training_batch,
    read_labeled_for_device,
    read_training_for_device,
)


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


def training_datasets(data: TrainingData, cfg: TrainConfig, decode: str = "cpu") -> dict:
    """The Ray Datasets of a run; both are streamed every epoch: nothing is decoded ahead and held.

    With decode="device" they carry JPEG bytes, which the workers decode (`worker_batches`).
    """
    return {
        "train": training_dataset(data.train, train_preset(cfg), data.weights, cfg.paste_prob, decode),
        "val": image_dataset(data.val, EvalPreset(cfg.image_size, cfg.geometry), decode),
    }


def train_preset(cfg: TrainConfig) -> TrainPreset:
    return TrainPreset(cfg.image_size, cfg.augment, cfg.background_prob, cfg.geometry)


def target_dataset(sources: list[ImageFiles], preset):
    """Ray Dataset of {image uint8 (B, 3, S, S), index, ok}: every target image once, in order, by `preset`."""
    import ray.data

    datasets, offset = [], 0
    for files in sources:
        n = len(files)
        rows = min(128, max(8, n // 16))  # blocks of this many files: tasks for every CPU, little lost on a retry
        blocks = [
            pa.table({"path": files.paths[i:i + rows], "size": files.sizes[i:i + rows], "index": np.arange(offset + i, offset + min(i + rows, n))})
            for i in range(0, n, rows)
        ]
        datasets.append(ray.data.from_arrow(blocks).map_batches(decode_target, fn_kwargs={"preset": preset, "fs": files.root.fs}, batch_size=None))
        offset += n
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def augmented_target_dataset(sources: list[ImageFiles], preset: TrainPreset):
    """Ray Dataset of augmented {image, index, ok}, shuffled anew every epoch (SHOT's training input)."""
    import ray.data

    rows, offset = [], 0
    for r, files in enumerate(sources):
        rows += [{"path": p, "label": offset + i, "mask": "", "root": r} for i, p in enumerate(files.paths)]
        offset += len(files)
    kwargs = {"preset": preset, "filesystems": [f.root.fs for f in sources]}
    return ray.data.from_items(rows, override_num_blocks=row_blocks(rows)).random_shuffle().map_batches(augment_target, fn_kwargs=kwargs, batch_size=32)
