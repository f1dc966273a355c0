"""Training: two-stage transfer learning on Ray Train, checkpoints, resume, the final package.

`train_one_epoch` and `evaluate` are plain torch over any iterable of batches
`{"image": uint8 (B, 3, S, S), "label": int64 (B,), "ok": bool (B,)}`. Ray appears only in
`train_loop_per_worker` (model preparation, dataset shards, report) and `run` (the driver).
"""

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

from cgi2real.checkpoints import (
    SPLIT_JSON,
    TRAIN_STATE_JSON,
    check_same_settings,
    checkpoint_file,
    latest_result,
    read_checkpoint,
    read_checkpoint_json,
    write_checkpoint,
)
from cgi2real.classes import composite_pairs
from cgi2real.config import DECODES, GEOMETRIES, LEGACY_GEOMETRY, TrainConfig, from_dict
from cgi2real.data import (
    PASTE_BATCH,
    LabeledImages,
    class_weights,
    image_dataset,
    reuse_split,
    scan_labeled_dataset,
    split_record,
    stratified_split,
    training_dataset,
)
from cgi2real.errors import InputError, RunFailed
from cgi2real.label import pseudo_labeled_images
from cgi2real.archs import IMAGENET_MEAN, IMAGENET_STD, check_image_size, check_unfreeze_from, get_arch
from cgi2real.model import (
    WEIGHTS_FILE,
    initial_model,
    num_outputs,
    package_config,
    read_starting_weights,
    save_model_package,
    set_train_mode,
    set_trainable,
)
from cgi2real.progress import RemoteProgress, counted
from cgi2real.package import read_package_info
from cgi2real.presets import AUGMENTATIONS, EvalPreset, TrainPreset
from cgi2real.device import autocast, model_input
from cgi2real.device_augment import DeviceTrainPreset
from cgi2real.device_preset import DevicePreset
from cgi2real.runtime import check_local_paths, failure_reason, say, start_ray
from cgi2real.storage import check_bucket, locate

AUX_LOSS_WEIGHT = 0.4  # as in the Inception v3 paper


class MaskedCrossEntropy(nn.Module):
    """Class-weighted, label-smoothed cross-entropy over the rows where `mask` is True.

    Undecodable images stay in the batch as masked rows, so every data-parallel worker still
    takes the same number of steps (DDP would hang otherwise).
    """

    def __init__(self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("class_weights", class_weights)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_row = F.cross_entropy(
            logits.float(), labels, weight=self.class_weights, reduction="none", label_smoothing=self.label_smoothing
        )  # (B,), already scaled by the weight of each row's class
        row_weight = mask.float() if self.class_weights is None else self.class_weights[labels] * mask
        return (per_row * mask).sum() / row_weight.sum().clamp_min(1e-8)


@dataclass
class EpochStats:
    """What one pass over the data measured (summed over workers by `reduce_stats`)."""

    num_classes: int
    loss_sum: float = 0.0  # per-batch mean loss times the batch's usable rows
    n: int = 0  # images used
    bad: int = 0  # undecodable images skipped
    seconds: float = 0.0
    confusion: np.ndarray = field(default=None)  # (K, K) counts: rows true class, columns predicted

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n, 1)

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.confusion.sum(), 1))

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present (robust to imbalance)."""
        support = self.confusion.sum(axis=1)
        recalls = np.diag(self.confusion)[support > 0] / support[support > 0]
        return float(recalls.mean()) if recalls.size else 0.0

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


class Tally:
    """Running sums kept on the device: the loop never waits for the GPU to report a number."""

    def __init__(self, num_classes: int, device: torch.device):
        self.k = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.confusion = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)  # last bin: masked rows
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        rows = mask.sum()
        self.loss_sum += loss.detach().double() * rows
        self.rows += rows
        self.seen += mask.numel()
        cells = torch.where(mask, labels * self.k + logits.detach().argmax(dim=1), self.k * self.k)
        self.confusion.scatter_add_(0, cells, torch.ones_like(cells))

    def result(self) -> EpochStats:
        n = int(self.rows)  # the one synchronization of the pass
        confusion = self.confusion[:-1].cpu().numpy().reshape(self.k, self.k)
        return EpochStats(self.k, float(self.loss_sum), n, self.seen - n, time.perf_counter() - self.start, confusion)


def train_one_epoch(
    model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, batches, device: torch.device,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, freeze_bn: bool = False,
) -> EpochStats:
    """One pass over `batches`; frozen BatchNorm layers (every one with `freeze_bn`) keep their statistics."""
    set_train_mode(model, freeze_bn)
    tally = Tally(num_outputs(model), device)
    for batch in batches:
        images, labels, mask = model_input(batch, device, mean, std)
        with autocast(device):
            output = model(images)
        logits, aux = (output.logits, output.aux_logits) if hasattr(output, "aux_logits") else (output, None)
        loss = loss_fn(logits, labels, mask)
        if aux is not None:
            loss = loss + AUX_LOSS_WEIGHT * loss_fn(aux, labels, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tally.add(loss, logits, labels, mask)
    return tally.result()


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, batches, device: torch.device, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> EpochStats:
    """Loss and confusion matrix of `model` (eval mode) over `batches`."""
    model.eval()
    tally = Tally(num_outputs(model), device)
    for batch in batches:
        images, labels, mask = model_input(batch, device, mean, std)
        with autocast(device):
            logits = model(images)
        tally.add(loss_fn(logits, labels, mask), logits, labels, mask)
    return tally.result()


def make_optimizer(model: nn.Module, cfg: TrainConfig, stage: str):
    """AdamW over the trainable parameters; stage 2 anneals its lower rate with a cosine."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = cfg.lr_head if stage == "head" else cfg.lr_finetune
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    steps = max(cfg.epochs_head if stage == "head" else cfg.epochs_finetune, 1)
    eta_min = lr if stage == "head" else 0.0  # stage 1 keeps a constant rate
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=eta_min)


# --- The Ray Train worker ----------------------------------------------------------------------


class UnreadableImages(RuntimeError):
    """Too many images of an epoch could not be read: on a cluster, usually local paths that its nodes cannot see."""


def check_readable(stats: "EpochStats", split: str, epoch: int, limit: float) -> None:
    """Abort the run when more than `limit` of an epoch's images could not be read or decoded.

    A few broken files are skipped and counted; a large share means the data is not there (a
    local folder on another node, a revoked credential), and a model trained on the rest would
    be exported as if nothing had happened.
    """
    total = stats.n + stats.bad
    if total and stats.bad > limit * total:
        raise UnreadableImages(
            f"{stats.bad} of {total} {split} images of epoch {epoch} could not be read or decoded (more than {limit:.0%}, --max-unreadable); "
            "check that every node can read the data: on a cluster, use s3:// or a shared file system"
        )


LOSS_CAP = 100.0  # a validation loss above this (or NaN) scores as this


def checkpoint_score(val_acc: float, val_loss: float) -> float:
    """One number that ranks checkpoints by validation accuracy, ties going to the lower loss.

    Ray keeps the best checkpoints by a single metric. Accuracies differ by at least 1/n; the loss,
    capped, moves the score by under 1e-8, so it only ever breaks ties.
    """
    loss = val_loss if math.isfinite(val_loss) else LOSS_CAP
    return val_acc - min(loss, LOSS_CAP) * 1e-10


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker.

    config = {"cfg": asdict(TrainConfig), "class_weights": [...], "split": the held-out split (or None),
    "start": (package config or None, ObjectRef of the starting safetensors bytes, or None),
    "progress": a progress.ProgressReporter (or None), "per_epoch": training images per epoch}.
    """
    import ray
    import ray.train
    import ray.train.torch

    cfg = from_dict(TrainConfig, config["cfg"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # Ray sets 1 thread per reserved CPU; use this node's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(cfg.seed)
    progress = config.get("progress") if rank == 0 else None
    tell = progress.say if progress else say  # the driver may not show a worker's own output

    start_config, start_ref = config["start"]
    start_bytes = ray.get(start_ref) if start_ref is not None else None  # read once by the driver, shared by every worker
    model = initial_model(cfg.weights, list(cfg.classes), cfg.image_size, start_bytes, start_config, cfg.arch)
    arch = get_arch(cfg.arch)
    weights = torch.tensor(config["class_weights"]) if cfg.class_weighting else None
    loss_fn = MaskedCrossEntropy(weights, cfg.label_smoothing).to(device)

    start_epoch, history, resumed_optimizer = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model_state, opt_state, state = read_checkpoint(folder)
        model.load_state_dict(model_state)
        start_epoch, history = state["epoch"] + 1, state["history"]
        resumed_optimizer = (state["stage"], opt_state, state["scheduler"])
        if rank == 0:
            tell(f"resuming after epoch {start_epoch}/{cfg.epochs} from its checkpoint")

    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    train_batches_of, val_batches_of = worker_batches(cfg, config.get("decode", "cpu"), device)
    if progress:
        progress.restart(start_epoch * config["per_epoch"])
    stage = None
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stage(epoch) != stage:  # a new stage: refreeze, rewrap for DDP, new optimizer
            stage = cfg.stage(epoch)
            trainable = set_trainable(model, stage, cfg.unfreeze_from)
            parallel_model = ray.train.torch.prepare_model(model)
            optimizer, scheduler = make_optimizer(model, cfg, stage)
            if resumed_optimizer and resumed_optimizer[0] == stage:
                optimizer.load_state_dict(resumed_optimizer[1])
                scheduler.load_state_dict(resumed_optimizer[2])
            resumed_optimizer = None
        lr = optimizer.param_groups[0]["lr"]
        # drop_last: a 1-image batch breaks BatchNorm; shards are equal, so all workers drop alike
        train_batches = train_batches_of(train_shard, drop_last=True, local_shuffle_buffer_size=2 * cfg.batch_size)
        if progress:
            progress.note(f"epoch {epoch + 1} of {cfg.epochs}")
            train_batches = counted(train_batches, progress, context.get_world_size())
        train_stats = reduce_stats(train_one_epoch(parallel_model, loss_fn, optimizer, train_batches, device, arch.mean, arch.std, cfg.freeze_bn), device)
        check_readable(train_stats, "training", epoch + 1, cfg.max_unreadable)
        scheduler.step()
        val_stats = reduce_stats(evaluate(model, loss_fn, val_batches_of(val_shard), device, arch.mean, arch.std), device)
        check_readable(val_stats, "validation", epoch + 1, cfg.max_unreadable)
        metrics = epoch_metrics(epoch, cfg.epochs, stage, lr, trainable, train_stats, val_stats)
        history.append(metrics)
        state = {
            "epoch": epoch, "stage": stage, "history": history, "config": config["cfg"],
            "package": package_config(model, list(cfg.classes), cfg.image_size, cfg.geometry),
            "device": device.type, "decode": config["decode"],  # what a finished run's package records
        }
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                write_checkpoint(folder, model, optimizer, scheduler, state)
                if config["split"] is not None:
                    with open(os.path.join(folder, SPLIT_JSON), "w") as f:
                        json.dump(config["split"], f)
                tell(format_epoch(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch + 1:04d}")


def reduce_stats(stats: EpochStats, device: torch.device) -> EpochStats:
    """Sum stats over data-parallel workers (slowest worker's time); a no-op for one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return stats
    sums = torch.tensor([stats.loss_sum, stats.n, stats.bad, *stats.confusion.ravel()], dtype=torch.float64, device=device)
    seconds = torch.tensor([stats.seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(sums)
    torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
    sums = sums.cpu().numpy()
    k = stats.num_classes
    return EpochStats(k, float(sums[0]), int(sums[1]), int(sums[2]), float(seconds), sums[3:].reshape(k, k).round().astype(np.int64))


def epoch_metrics(epoch, epochs, stage, lr, trainable, train: EpochStats, val: EpochStats) -> dict:
    return {
        "epoch": epoch + 1,
        "epochs": epochs,
        "stage": stage,
        "lr": lr,
        "trainable_params": trainable,
        "train_loss": train.loss,
        "train_acc": train.accuracy,
        "val_loss": val.loss,
        "val_acc": val.accuracy,
        "val_balanced_acc": val.balanced_accuracy,
        "checkpoint_score": checkpoint_score(val.accuracy, val.loss),
        "img_per_s": train.images_per_second,
        "seconds": train.seconds + val.seconds,
        "bad_images": train.bad + val.bad,
    }


def format_epoch(m: dict) -> str:
    bad = f" | {m['bad_images']} unreadable or undecodable images skipped" if m["bad_images"] else ""
    return (
        f"epoch {m['epoch']}/{m['epochs']} [{m['stage']:8}] train loss {m['train_loss']:.4f} acc {m['train_acc']:.3f}"
        f" | val loss {m['val_loss']:.4f} acc {m['val_acc']:.3f} (balanced {m['val_balanced_acc']:.3f})"
        f" | {m['img_per_s']:.1f} img/s | lr {m['lr']:.2e}{bad}"
    )


# --- The driver ---------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    package: str  # URI of the model package written
    run_path: str  # Ray Train run folder (checkpoints)
    best_epoch: int
    best: dict  # that epoch's metrics
    history: list[dict]


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
        total, totals = sum(drawn.values()), dict(drawn)
        for (recipient, donor), result in composite_pairs(classes).items():
            share = donors[classes[donor]] / total if total else 0.0  # of a batch's other rows, on average
            moved = paste_prob * drawn[classes[recipient]] * (1 - (1 - share) ** (batch_size - 1))
            totals[classes[recipient]] -= moved
            totals[classes[result]] += moved
        return totals

    def counts(self) -> dict:
        """Class counts for the package summary: totals and per root (with weight and masks)."""
        val_by_root = self.val if self.held_out else [None] * len(self.train)
        return {
            "train": _sum_counts(self.train),
            "val": _sum_counts(self.val),
            "roots": [
                {"uri": images.root.uri, "weight": weight, "train": images.class_counts(), "masks": images.masked,
                 **({"val": val.class_counts()} if val is not None else {})}
                for images, weight, val in zip(self.train, self.weights, val_by_root)
            ],
        }

    def split(self) -> dict | None:
        """The held-out split as a checkpoint keeps it (None with a separate --val dataset)."""
        return {"roots": [split_record(t, v) for t, v in zip(self.train, self.val)]} if self.held_out else None


def _sum_counts(parts: list[LabeledImages]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for images in parts:
        for name, n in images.class_counts().items():
            totals[name] = totals.get(name, 0) + n
    return totals


def check_options(cfg: TrainConfig) -> None:
    """Refuse out-of-range settings, before anything is read (`cfg` resolved: `resolve_start`)."""
    arch = get_arch(cfg.arch)
    assert cfg.image_size is not None, "a run from a package is resolved by resolve_start first"
    check_image_size(arch, cfg.image_size)
    check_unfreeze_from(arch, cfg.unfreeze_from)
    if cfg.epochs_head < 0 or cfg.epochs_finetune < 0 or cfg.epochs < 1:
        raise InputError(f"epochs must be >= 0 with at least one in total, got {cfg.epochs_head}+{cfg.epochs_finetune}")
    if cfg.batch_size < 1 or cfg.workers < 1 or cfg.max_failures < -1:
        raise InputError("--batch-size and --workers must be >= 1, --max-failures >= -1")
    if cfg.augment not in AUGMENTATIONS:
        raise InputError(f"--augment {cfg.augment!r}: expected one of {', '.join(AUGMENTATIONS)}")
    if cfg.geometry not in GEOMETRIES:
        raise InputError(f"--geometry {cfg.geometry!r}: expected one of {', '.join(GEOMETRIES)}")
    if cfg.decode is not None and cfg.decode not in DECODES:
        raise InputError(f"--decode {cfg.decode!r}: expected one of {', '.join(DECODES)}")
    for name in ("background_prob", "paste_prob", "max_unreadable"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise InputError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.min_confidence <= 1:
        raise InputError(f"--min-confidence must be between 0 and 1, got {cfg.min_confidence}")
    if cfg.class_weight_power < 0:
        raise InputError(f"--class-weight-power must be >= 0, got {cfg.class_weight_power}")
    if not 0 <= cfg.label_smoothing < 1:
        raise InputError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not cfg.data:
        raise InputError("give at least one --data dataset to train on")


def prepare_inputs(cfg: TrainConfig, split: dict | None = None) -> TrainingData:
    """Validate everything cheap before starting Ray: settings, datasets, split, weights, --out.

    `split` is a resumed run's held-out split (`TrainingData.split`): its validation files stay
    held out, files added since go to training only, and a validation file that is gone is refused.
    """
    check_options(cfg)
    weights = list(cfg.data_weights) if cfg.data_weights else [1.0] * len(cfg.data)
    if len(weights) != len(cfg.data) or min(weights) < 0 or max(weights) <= 0:
        raise InputError(
            f"--data-weights needs one weight >= 0 per --data root ({len(cfg.data)}), not all 0; got {','.join(map(str, weights))}"
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
        found = "; ".join(f"{images.root.uri}: {_counts_text(images.class_counts())}" for images in roots)
        raise InputError(f"no images of class {', '.join(missing)} in the training data ({found}); pass --classes to train on other classes")
    if sum(drawn.values()) < cfg.batch_size * cfg.workers:
        raise InputError(
            f"{round(sum(drawn.values()))} training images per epoch are fewer than --batch-size {cfg.batch_size} x --workers {cfg.workers}: "
            "lower them or add images"
        )
    if sum(len(v) for v in data.val) == 0:
        raise InputError(f"no validation images: give --val DIR or more images per class than {max(_sum_counts(roots).values())}")
    check_bucket(locate(cfg.out, cfg.s3_endpoint), "--out")
    return data


def run(cfg: TrainConfig) -> TrainSummary:
    """Train on Ray Train and write the best-by-validation weights as a model package to cfg.out."""
    import ray
    import ray.data
    import ray.train

    cfg = resolve_start(cfg)
    check_options(cfg)
    name = cfg.name or datetime.now().strftime("cgi2real-%Y%m%d-%H%M%S")
    storage = locate(cfg.storage or os.path.join(os.path.expanduser("~"), "ray_results"), cfg.s3_endpoint)
    so_far = latest_result(storage.child(name))
    latest = so_far.checkpoint if so_far is not None else None
    state = check_resumable(latest, storage.child(name), cfg) if latest is not None else None
    data = prepare_inputs(cfg, read_checkpoint_json(latest, SPLIT_JSON) if latest is not None else None)
    start_config, start_bytes = read_starting_weights(cfg.weights, cfg.s3_endpoint, cfg.arch)  # fails fast, with the message
    counts = data.counts()
    drawn = {c: round(n) for c, n in data.per_epoch().items()}
    pasted = {c: round(n) for c, n in data.per_epoch(cfg.paste_prob).items()}
    weights = class_weights(pasted, cfg.class_weight_power)
    for root in counts["roots"]:
        masks = f", {root['masks']} with masks" if root["masks"] else ""
        print(f"  {root['uri']}: {_counts_text(root['train'])}{masks}; drawn x{root['weight']:g} per epoch")
    after = f"; after pasting about {_counts_text(pasted)}" if pasted != drawn else ""
    print(f"training on {sum(drawn.values())} images per epoch ({_counts_text(drawn)}{after}), validating on {sum(counts['val'].values())}")
    print(f"run {name!r} in {storage.uri}: rerun with --storage {storage.uri} --name {name} to resume", flush=True)
    for note in data.notes:
        print(f"resuming: {note}")
    if state is not None and state["epoch"] + 1 >= cfg.epochs and "device" in state:
        # Nothing left to train: no Ray Train start-up (about 15 s on 2 cores) to be told so.
        print(f"run {name!r} finished all {cfg.epochs} epochs already: its best checkpoint becomes the package", flush=True)
        return export_best(so_far, cfg, counts, weights, state["device"] == "cuda", state["decode"])

    start_ray(min_cpus=cfg.workers + 1)  # a CPU beyond the workers' for decoding
    inputs = [("DATA", images) for images in data.train] + ([("--val", data.val[0])] if cfg.val else [])
    check_local_paths(
        {f"{option} {images.root.uri}": images.paths[0] for option, images in inputs if images.root.scheme == "file" and images.paths},
        {"--out": locate(cfg.out, cfg.s3_endpoint), "--storage": storage},
    )
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if use_gpu and gpus < cfg.workers and not os.environ.get("RAY_ADDRESS"):
        # A local instance cannot grow; an autoscaling cluster can, so there we let Ray wait.
        raise InputError(f"--gpu with {cfg.workers} worker(s) needs as many GPUs; this machine has {int(gpus)}")
    data_context = ray.data.DataContext.get_current()  # one line per epoch instead of Ray Data's bars
    data_context.enable_progress_bars = data_context.print_on_execution_start = False
    decode = cfg.decode or ("device" if use_gpu else "cpu")
    datasets = training_datasets(data, cfg, decode)
    start = (start_config, ray.put(start_bytes) if start_bytes is not None else None)
    per_epoch = sum(drawn.values())
    with RemoteProgress("training", cfg.epochs * per_epoch) as progress:
        result = _fit(cfg, name, storage, use_gpu, datasets, {
            "cfg": asdict(cfg), "class_weights": list(weights.values()), "split": data.split(), "start": start,
            "progress": progress.reporter(), "per_epoch": per_epoch, "decode": decode,
        })
    return export_best(result, cfg, counts, weights, use_gpu, decode)


def resolve_start(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the arch (and its defaults) of the package it starts from, if it starts from one."""
    if cfg.weights in ("imagenet", "none"):
        return cfg
    info = read_package_info(cfg.weights, cfg.s3_endpoint)
    return cfg.for_package(info.arch, info.image_size)


def _fit(cfg: TrainConfig, name: str, storage, use_gpu: bool, datasets: dict, loop_config: dict):
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=checkpoint_config(),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise RunFailed(f"training failed: {failure_reason(e, UnreadableImages)} (run folder {storage.child(name).uri}; rerun with the same --storage/--name to resume)") from e


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


def worker_batches(cfg: TrainConfig, decode: str, device: torch.device):
    """(train, val) functions from a dataset shard to its batches of model input on `device`.

    decode="cpu": the rows are pixels already, moved by Ray. decode="device": the rows are bytes,
    decoded and augmented here in batches (`DeviceTrainPreset`, `DevicePreset`).
    """
    if decode == "cpu":
        def torch_batches(shard, **options):
            return shard.iter_torch_batches(batch_size=cfg.batch_size, device=device, prefetch_batches=2, **options)

        return torch_batches, torch_batches
    augment = DeviceTrainPreset(train_preset(cfg), device, composite_pairs(cfg.classes), cfg.paste_prob)
    frame = DevicePreset(EvalPreset(cfg.image_size, cfg.geometry), device)

    def val_batch(batch: dict) -> dict:
        errors = np.array(batch["error"], dtype=object)
        images = frame.batch(batch, errors)
        return {"image": images, "label": torch.from_numpy(batch["label"]).to(device), "ok": torch.from_numpy(errors == "").to(device)}

    def batches(to_batch):
        return lambda shard, **options: map(to_batch, shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2, **options))

    return batches(augment), batches(val_batch)


def checkpoint_config():
    import ray.train

    # The two best epochs by accuracy, then loss (`checkpoint_score`); Ray also keeps the latest.
    return ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="max")


# Settings that may change when a run resumes; any other difference would corrupt it.
RESUMABLE_CHANGES = frozenset({"out", "workers", "use_gpu", "decode", "storage", "name", "max_failures", "max_unreadable", "s3_endpoint"})
# What a run checkpointed before a setting existed did instead (compared when resuming it).
LEGACY_SETTINGS = {"geometry": LEGACY_GEOMETRY, "pseudo_labels": None, "min_confidence": 0.9, "arch": "inception_v3", "class_weight_power": 1.0, "freeze_bn": False}


def check_resumable(latest, run_folder, cfg: TrainConfig) -> dict:
    """Refuse to resume a run whose latest checkpoint was made with other training settings; return its train state."""
    return check_same_settings(latest, run_folder, cfg, RESUMABLE_CHANGES, LEGACY_SETTINGS)


def pick_best(result) -> tuple:
    """(checkpoint, metrics) of the best epoch by validation accuracy, ties to the lower loss, among those Ray kept."""
    return max(result.best_checkpoints, key=lambda cm: (cm[1]["val_acc"], -cm[1]["val_loss"]))


def export_best(result, cfg: TrainConfig, counts: dict, weights: dict, use_gpu: bool, decode: str) -> TrainSummary:
    """Write the best-by-validation checkpoint (accuracy, then loss) as the model package."""
    best_checkpoint, best = pick_best(result)
    history = checkpoint_file(result.checkpoint, TRAIN_STATE_JSON, json.loads)["history"]
    package = checkpoint_file(best_checkpoint, TRAIN_STATE_JSON, json.loads)["package"]
    state_dict = checkpoint_file(best_checkpoint, WEIGHTS_FILE, load_safetensors)
    training = {
        "config": asdict(cfg),
        "class_counts": counts,
        "class_weights": weights if cfg.class_weighting else None,
        "epochs": history,
        "best_epoch": best["epoch"],
        "best": best,
        "workers": cfg.workers,
        "device": "gpu" if use_gpu else "cpu",
        "decode": decode,
    }
    save_model_package(state_dict, {**package, "training": training}, cfg.out, cfg.s3_endpoint)
    return TrainSummary(locate(cfg.out, cfg.s3_endpoint).uri, str(result.path), best["epoch"], best, history)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())
