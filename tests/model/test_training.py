"""The plain-torch training pieces, without Ray: epochs, evaluation, loss, checkpoints."""


import numpy as np
import pytest
import torch

from cgi2real.core.config import TrainConfig
from cgi2real.model.networks import build_model, set_trainable
from cgi2real.model.training import (
    Diverged,
    EpochStats,
    MaskedCrossEntropy,
    UnreadableImages,
    check_finite,
    check_readable,
    checkpoint_score,
    evaluate,
    make_optimizer,
    train_one_epoch,
)

CPU = torch.device("cpu")


def batches(n_batches=2, batch=6, size=80, seed=0, bad_rows=()):
    """Two-class toy batches: class 1 images are bright, class 0 dark."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.arange(batch) % 2
        images = (torch.rand(batch, 3, size, size, generator=g) * 100 + labels.view(-1, 1, 1, 1) * 150).to(torch.uint8)
        ok = torch.ones(batch, dtype=torch.bool)
        ok[list(bad_rows)] = False
        out.append({"image": images, "label": labels, "ok": ok})
    return out


def test_train_one_epoch_learns_a_separable_toy_task():
    torch.manual_seed(0)
    model = build_model(2, 80)
    set_trainable(model, "finetune", "Mixed_7c")
    loss_fn = MaskedCrossEntropy()
    optimizer, _ = make_optimizer(model, TrainConfig(data=("x",), out="y", lr_finetune=1e-3), "finetune")
    data = batches()
    first = train_one_epoch(model, loss_fn, optimizer, data, CPU)
    for _ in range(6):
        last = train_one_epoch(model, loss_fn, optimizer, data, CPU)
    assert first.n == last.n == 12 and last.bad == 0
    assert last.loss < 0.5 * first.loss
    assert last.accuracy == 1.0


def random_head(model):
    """build_model zeroes a fresh classifier (uniform predictions); these tests need varied ones."""
    torch.nn.init.normal_(model.fc.weight, std=0.1)
    return model


def test_evaluate_confusion_matches_direct_predictions():
    torch.manual_seed(0)
    model = random_head(build_model(2, 80)).eval()
    data = batches(seed=1)
    stats = evaluate(model, MaskedCrossEntropy(), data, CPU)
    expected = np.zeros((2, 2), dtype=np.int64)
    with torch.no_grad():
        for batch in data:
            from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
            from cgi2real.imaging.presets import normalize

            predicted = model(normalize(batch["image"], IMAGENET_MEAN, IMAGENET_STD)).argmax(1)
            for t, p in zip(batch["label"], predicted):
                expected[t, p] += 1
    assert stats.n == 12 and np.array_equal(stats.confusion, expected)


def test_masked_rows_are_left_out_of_loss_and_counts():
    torch.manual_seed(0)
    model = random_head(build_model(2, 80)).eval()
    loss_fn = MaskedCrossEntropy()
    clean = evaluate(model, loss_fn, batches(bad_rows=()), CPU)
    masked = evaluate(model, loss_fn, batches(bad_rows=(0, 1)), CPU)
    assert clean.n == 12 and masked.n == 8 and masked.bad == 4
    assert masked.confusion.sum() == 8


def test_class_weights_scale_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    mask = torch.tensor([True, True, True])
    plain = MaskedCrossEntropy()(logits, labels, mask)
    assert torch.isclose(plain, torch.nn.functional.cross_entropy(logits, labels))
    weighted = MaskedCrossEntropy(torch.tensor([1.0, 3.0]))(logits, labels, mask)
    assert torch.isclose(weighted, torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0])))


def test_epoch_stats_metrics():
    stats = EpochStats(num_classes=3, confusion=np.array([[8, 2, 0], [0, 1, 1], [0, 0, 0]]))
    assert stats.accuracy == 9 / 12
    assert stats.balanced_accuracy == (0.8 + 0.5) / 2


def test_checkpoint_score_orders_by_accuracy_then_loss():
    scores = [checkpoint_score(a, l) for a, l in [(0.5, 0.70), (0.5, 0.90), (0.5, 0.80), (0.4, 0.10), (0.5 + 1 / 10**6, 50.0), (0.5, float("nan"))]]
    assert sorted(range(6), key=lambda i: -scores[i]) == [4, 0, 2, 1, 5, 3]


def test_an_epoch_with_too_many_unreadable_images_stops_the_run():
    check_readable(EpochStats(3, n=95, bad=5), "training", 1, 0.05)  # 5 %: skipped and counted
    with pytest.raises(UnreadableImages, match="6 of 100 validation images of epoch 2 could not be read"):
        check_readable(EpochStats(3, n=94, bad=6), "validation", 2, 0.05)


def test_an_epoch_whose_loss_is_not_a_number_stops_the_run():
    torch.manual_seed(0)
    model = build_model(2, 80, "none")
    loss_fn = MaskedCrossEntropy()
    sane = train_one_epoch(model, loss_fn, torch.optim.AdamW(model.parameters(), lr=1e-3), batches(3), CPU)
    check_finite(sane, "training", 1)
    blown = train_one_epoch(model, loss_fn, torch.optim.AdamW(model.parameters(), lr=1e30), batches(3), CPU)  # weights of +-1e30 overflow
    with pytest.raises(Diverged, match="training diverged in epoch 2: the training loss is nan, so this epoch's weights are not kept"):
        check_finite(blown, "training", 2)
    check_finite(EpochStats(3, loss_sum=0.0, n=0), "validation", 2)  # no usable rows: nothing to judge (check_readable's call)
    with pytest.raises(Diverged, match="the validation loss is inf"):
        check_finite(EpochStats(3, loss_sum=float("inf"), n=4), "validation", 3)
