"""A training run's plan: settings resolved (a package's arch), inputs scanned and split, the run
folder's state (resume or export), the output checked; torch-free, so `--dry-run` and bad input
are answered without loading torch or starting Ray."""

import os
from dataclasses import dataclass, replace
from datetime import datetime

from cgi2real.core.classes import class_weights
from cgi2real.core.config import LEGACY_GEOMETRY, TrainConfig
from cgi2real.core.errors import InputError
from cgi2real.formats.checkpoints import SPLIT_JSON, check_same_settings, latest_result, read_checkpoint_json
from cgi2real.formats.class_folders import TrainingData, reuse_split, scan_labeled_dataset, stratified_split, sum_counts
from cgi2real.formats.label_table import pseudo_labeled_images
from cgi2real.formats.package import PACKAGE_FILES, read_package_info
from cgi2real.storage.locations import Location, check_output, locate

# Settings that may change when a run resumes; any other difference would corrupt it.
RESUMABLE_CHANGES = frozenset({"out", "overwrite", "workers", "use_gpu", "decode", "storage", "name", "max_failures", "max_unreadable", "s3_endpoint"})
# What a run checkpointed before a setting existed did instead (compared when resuming it).
LEGACY_SETTINGS = {"geometry": LEGACY_GEOMETRY, "pseudo_labels": None, "min_confidence": 0.9, "arch": "inception_v3", "class_weight_power": 1.0, "freeze_bn": False}


@dataclass
class TrainPlan:
    cfg: TrainConfig  # resolved: the arch (a --weights package's), its defaults, the run's name and storage
    storage: Location
    data: TrainingData
    so_far: object | None  # the run folder's Ray Train `Result` (a run to resume or export), or None
    state: dict | None  # its latest checkpoint's train state

    @property
    def finished(self) -> bool:
        """The run has trained all its epochs already: its best checkpoint only needs exporting."""
        return self.state is not None and self.state["epoch"] + 1 >= self.cfg.epochs and "device" in self.state

    def drawn(self, paste_prob: float = 0.0) -> dict[str, int]:
        return {c: round(n) for c, n in self.data.per_epoch(paste_prob).items()}

    def class_weights(self) -> dict[str, float]:
        """The loss's class weights: from the labels it will see per epoch, pasting included."""
        return class_weights(self.drawn(self.cfg.paste_prob), self.cfg.class_weight_power)

    def describe(self) -> list[str]:
        """What the run trains on and where it goes: printed at its start and by --dry-run."""
        cfg, counts = self.cfg, self.data.counts()
        drawn, pasted = self.drawn(), self.drawn(cfg.paste_prob)
        lines = []
        for root in counts["roots"]:
            masks = f", {root['masks']} with masks" if root["masks"] else ""
            lines.append(f"  {root['uri']}: {counts_text(root['train'])}{masks}; drawn x{root['weight']:g} per epoch")
        after = f"; after pasting about {counts_text(pasted)}" if pasted != drawn else ""
        lines.append(f"training on {sum(drawn.values())} images per epoch ({counts_text(drawn)}{after}), validating on {sum(counts['val'].values())}")
        lines.append(f"run {cfg.name!r} in {self.storage.uri}: rerun with --storage {self.storage.uri} --name {cfg.name} to resume")
        lines += [f"resuming: {note}" for note in self.data.notes]
        if self.finished:
            lines.append(f"run {cfg.name!r} finished all {cfg.epochs} epochs already: its best checkpoint becomes the package")
        return lines

    def preview(self) -> list[str]:
        """--dry-run's lines: what `describe` says at the start, and the network and its stages."""
        return [*self.describe(), self.recipe()]

    def recipe(self) -> str:
        """The network and its stages, one line."""
        cfg = self.cfg
        stages = [f"the head {cfg.epochs_head} epoch(s) at lr {cfg.lr_head:g}"] if cfg.epochs_head else []
        if cfg.epochs_finetune:
            stages.append(f"from {cfg.unfreeze_from} on {cfg.epochs_finetune} epoch(s) at lr {cfg.lr_finetune:g}")
        stages = ", then ".join(stages)
        done = f"; {self.state['epoch'] + 1} done" if self.state is not None else ""
        return f"{cfg.arch} at {cfg.image_size} px from weights {cfg.weights}: {stages}{done}; package to {locate(cfg.out, cfg.s3_endpoint).uri}"


def plan(cfg: TrainConfig) -> TrainPlan:
    """Everything cheap checked, before torch or Ray: settings, datasets, split, weights, run folder, --out."""
    cfg = resolve_start(cfg)
    cfg.check()
    name = cfg.name or datetime.now().strftime("cgi2real-%Y%m%d-%H%M%S")
    storage = locate(cfg.storage or os.path.join(os.path.expanduser("~"), "ray_results"), cfg.s3_endpoint)
    cfg = replace(cfg, name=name, storage=storage.uri)  # what a rerun needs to resume or export this run
    so_far = latest_result(storage.child(name))
    latest = so_far.checkpoint if so_far is not None else None
    state = check_resumable(latest, storage.child(name), cfg) if latest is not None else None
    data = prepare_inputs(cfg, read_checkpoint_json(latest, SPLIT_JSON) if latest is not None else None)
    return TrainPlan(cfg, storage, data, so_far, state)


def prepare_inputs(cfg: TrainConfig, split: dict | None = None) -> TrainingData:
    """Validate everything cheap before starting Ray: settings, datasets, split, weights, --out.

    `split` is a resumed run's held-out split (`TrainingData.split`): its validation files stay
    held out, files added since go to training only, and a validation file that is gone is refused.
    """
    cfg.check()
    weights = list(cfg.data_weights) if cfg.data_weights else [1.0] * len(cfg.data)
    if len(weights) != len(cfg.data) or min(weights) < 0 or max(weights) <= 0:
        raise InputError(
            f"--repeats {','.join(map(str, weights))}: expected one number >= 0 per --data ({len(cfg.data)}), not all 0"
        )
    roots = [scan_labeled_dataset(uri, cfg.classes, cfg.s3_endpoint, require_every_class=False) for uri in cfg.data]
    pseudo = [pseudo_labeled_images(cfg.pseudo_labels, cfg.classes, cfg.min_confidence, cfg.s3_endpoint)] if cfg.pseudo_labels else []
    notes = []
    if cfg.val:
        data = TrainingData(roots + pseudo, [scan_labeled_dataset(cfg.val, cfg.classes, cfg.s3_endpoint, require_every_class=False)], weights + [1.0] * len(pseudo), held_out=False)
    elif split is not None:
        kept = [reuse_split(images, record) for images, record in zip(roots + pseudo, split["roots"])]
        new, gone = sum(k.new for k in kept), sum(k.gone for k in kept)
        notes.append(f"kept the run's validation split ({sum(len(k.val) for k in kept)} images)")
        if new:
            notes.append(f"{new} file(s) added since the run started go to training only")
        if gone:
            notes.append(f"{gone} training file(s) of the run are gone")
        data = TrainingData([k.train for k in kept], [k.val for k in kept], weights + [1.0] * len(pseudo), notes=notes)
    else:
        # pseudo-labels train only: accuracy on a model's own labels would say nothing
        splits = [stratified_split(images, cfg.val_fraction, cfg.seed) for images in roots] + [(images, images.subset([])) for images in pseudo]
        data = TrainingData([t for t, _ in splits], [v for _, v in splits], weights + [1.0] * len(pseudo))
    drawn = data.per_epoch()
    missing = [name for name, n in drawn.items() if n == 0]
    if missing:
        found = "; ".join(f"{images.root.uri}: {counts_text(images.class_counts())}" for images in roots)
        raise InputError(f"no images of class {', '.join(missing)} in the training data ({found}); pass --classes to train on other classes")
    if sum(drawn.values()) < cfg.batch_size * cfg.workers:
        raise InputError(
            f"{round(sum(drawn.values()))} training images per epoch are fewer than --batch-size {cfg.batch_size} x --workers {cfg.workers}: "
            "lower them or add images"
        )
    if sum(len(v) for v in data.val) == 0:
        raise InputError(f"no validation images: give --val DIR or more images per class than {max(sum_counts(roots).values())}")
    inputs = [("--data", images.root) for images in roots] + [("--val", v.root) for v in data.val if cfg.val]
    if cfg.pseudo_labels:
        inputs.append(("--pseudo-labels", locate(cfg.pseudo_labels, cfg.s3_endpoint)))
    check_output(locate(cfg.out, cfg.s3_endpoint), "--out", inputs, "model package", PACKAGE_FILES, cfg.overwrite)
    return data


def resolve_start(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the arch (and its defaults) of the package it starts from, if it starts from one."""
    if cfg.weights in ("imagenet", "none"):
        return cfg
    if not locate(cfg.weights, cfg.s3_endpoint).exists():
        raise InputError(f"--weights {cfg.weights!r}: expected imagenet, none or a model package folder (there is none at that path)")
    info = read_package_info(cfg.weights, cfg.s3_endpoint)
    return cfg.for_package(info.arch, info.image_size)


def check_resumable(latest, run_folder, cfg: TrainConfig) -> dict:
    """Refuse to resume a run whose latest checkpoint was made with other training settings; return its train state."""
    return check_same_settings(latest, run_folder, cfg, RESUMABLE_CHANGES, LEGACY_SETTINGS)


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())
