"""Supervised training maths in plain torch: the loss, an epoch's statistics, one epoch of training,
evaluation, the optimizer of each stage, and how epochs are scored.

`train_one_epoch` and `evaluate` take any iterable of batches
`{"image": uint8 (B, 3, S, S), "label": int64 (B,), "ok": bool (B,)}`; Ray is not imported here
(`stages.train` runs them on Ray Train workers through `runtime.trainer`).
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
from cgi2real.core.config import TrainConfig
from cgi2real.model.inputs import forward
from cgi2real.model.networks import num_outputs, set_train_mode

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
        output, labels, mask = forward(model, batch, device, mean, std)
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
        logits, labels, mask = forward(model, batch, device, mean, std)
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


class Diverged(RuntimeError):
    """The loss stopped being a number: the weights are no longer finite."""


def check_finite(stats: "EpochStats", split: str, epoch: int) -> None:
    """Abort the run when an epoch's loss is NaN or infinite.

    Such an epoch's weights give NaN for every image; reported, they would be checkpointed and could
    be exported as a package that labels everything alike (seen on an H200: Inception v3 from random
    weights, bf16, --decode device).
    """
    if not math.isfinite(stats.loss):
        raise Diverged(
            f"training diverged in epoch {epoch}: the {split} loss is {stats.loss}, so this epoch's weights are not kept; "
            "lower the learning rate (--lr-head, --lr-finetune) or start from pretrained weights"
        )


EPOCH_ERRORS = (UnreadableImages, Diverged)  # what `check_epoch` raises: messages meant for the user


def check_epoch(stats: "EpochStats", split: str, epoch: int, max_unreadable: float) -> None:
    """What an epoch's stats must pass before the epoch is checkpointed: enough images read, a finite loss."""
    check_readable(stats, split, epoch, max_unreadable)
    check_finite(stats, split, epoch)
