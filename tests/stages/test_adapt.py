"""Adaptation without Ray: BatchNorm re-estimation on a shift we make, SHOT's losses and self-labels by hand."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
from cgi2real.core.config import AdaptConfig
from cgi2real.imaging.presets import normalize
from cgi2real.model.networks import build_model
from cgi2real.stages.adapt import centroid_labels, estimate_bn_statistics, estimate_prior, freeze_classifier, mix_bn_statistics, shot_epoch, shot_loss

CPU = torch.device("cpu")
SIZE = 75


def squares(n: int, seed: int, shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, S, S) noisy grey images with a red square top-left (class 0) or bottom-right (class 1).

    `shifted`: the same scenes through another camera: contrast cut to 45 %, a colour cast, blur.
    """
    rng = np.random.default_rng(seed)
    pixels = np.full((n, SIZE, SIZE, 3), 110, np.float32) + rng.normal(0, 12, (n, SIZE, SIZE, 3))
    labels = rng.integers(0, 2, n)
    for i, label in enumerate(labels):
        low, high = (4, 20) if label == 0 else (40, 56)
        r, c = rng.integers(low, high, 2)
        pixels[i, r:r + 16, c:c + 16] = (200, 60, 60)
    pixels = pixels.clip(0, 255)
    if shifted:
        pixels = pixels * 0.45 + np.array([150, 110, 60])
        blurred = [Image.fromarray(p.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2)) for p in pixels]
        pixels = np.stack([np.asarray(b, np.float32) for b in blurred])
    return torch.from_numpy(pixels.clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def accuracy(model, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        return (model(normalize(images, IMAGENET_MEAN, IMAGENET_STD)).argmax(dim=1) == labels).float().mean().item()


def train_source_model(seed: int = 0) -> torch.nn.Module:
    """An Inception v3 trained from scratch to tell the squares apart (30 steps of 16), its
    BatchNorm statistics then measured on the whole training set (by `estimate_bn_statistics`,
    whose target-side use the tests below check; the source accuracy they require checks this one).

    The running averages of 30 fast-moving steps are not the final weights' statistics: in eval
    mode they gave 0.53–0.69 accuracy for four seeds in five, against 0.95–1.0 in train mode, and
    which seeds failed changed with the CPU the floats were summed on.
    """
    torch.manual_seed(seed)
    model = build_model(2, SIZE, "none")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = squares(480, seed=0)
    model.train()
    for start in range(0, 480, 16):
        loss = torch.nn.functional.cross_entropy(model(normalize(images[start:start + 16], IMAGENET_MEAN, IMAGENET_STD)), labels[start:start + 16])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    estimate_bn_statistics(model, batches_of(images), CPU, IMAGENET_MEAN, IMAGENET_STD)
    return model


@pytest.fixture(scope="module")
def source_model():
    return train_source_model()


def batches_of(images: torch.Tensor, size: int = 32, bad: int = 0) -> list[dict]:
    """{image, ok, index} batches; the first `bad` rows are marked unreadable (and made garbage)."""
    ok = torch.ones(len(images), dtype=torch.bool)
    ok[:bad] = False
    images = images.clone()
    images[:bad] = 255
    return [{"image": images[i:i + size], "ok": ok[i:i + size], "index": torch.arange(i, min(i + size, len(images)))} for i in range(0, len(images), size)]


@pytest.mark.slow  # the source model trains for about 20 s
def test_bn_statistics_of_the_target_recover_accuracy_under_a_camera_shift(source_model):
    model = source_model
    test, test_labels = squares(128, seed=1)
    shifted, shifted_labels = squares(128, seed=2, shifted=True)
    assert accuracy(model, test, test_labels) > 0.9
    before = accuracy(model, shifted, shifted_labels)
    assert before < 0.75, "the shift should hurt the source model"
    source = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        target, _ = squares(160, seed=3, shifted=True)  # unlabeled images of the target camera
        used, bad = estimate_bn_statistics(model, batches_of(target, bad=5), CPU, IMAGENET_MEAN, IMAGENET_STD)
        assert (used, bad) == (155, 5)
        after = accuracy(model, shifted, shifted_labels)
        assert after >= before + 0.2 and after > 0.85
        state = model.state_dict()
        assert not torch.equal(state["Conv2d_1a_3x3.bn.running_mean"], source["Conv2d_1a_3x3.bn.running_mean"])
        assert all(torch.equal(state[k], source[k]) for k in source if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        assert model.Conv2d_1a_3x3.bn.momentum == 0.1  # torchvision's, restored after the pass
    finally:
        model.load_state_dict(source)


def test_bn_statistics_are_the_image_weighted_average_and_mix_blends_them():
    layer = torch.nn.BatchNorm2d(2)
    torch.manual_seed(0)
    first, second = torch.randn(6, 2, 4, 4) + 3, torch.randn(2, 2, 4, 4) * 2 - 1

    class Identity(torch.nn.Module):  # feeds the BatchNorm the raw values
        def __init__(self):
            super().__init__()
            self.bn = layer

        def forward(self, x):
            return self.bn(x.float())

    model = Identity()
    batches = [{"image": first, "ok": torch.ones(6, dtype=torch.bool)}, {"image": second, "ok": torch.ones(2, dtype=torch.bool)}]
    estimate_bn_statistics(model, batches, CPU, (0.0, 0.0), (1 / 255, 1 / 255))  # normalize() undone: x / 255 * 255
    expected_mean = (6 * first.mean(dim=(0, 2, 3)) + 2 * second.mean(dim=(0, 2, 3))) / 8
    assert torch.allclose(layer.running_mean, expected_mean, atol=1e-4)
    batch_weighted = (first.mean(dim=(0, 2, 3)) + second.mean(dim=(0, 2, 3))) / 2  # what momentum=None would give
    assert not torch.allclose(layer.running_mean, batch_weighted, atol=1e-2)
    target_mean, target_var = layer.running_mean.clone(), layer.running_var.clone()
    source = {"bn.running_mean": torch.zeros(2), "bn.running_var": torch.ones(2)}
    mix_bn_statistics(model, source, 0.25)
    assert torch.allclose(layer.running_mean, 0.25 * target_mean)
    assert torch.allclose(layer.running_var, 0.25 * target_var + 0.75)


def test_shot_loss_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    logits = torch.log(p)
    loss, parts = shot_loss(logits, torch.tensor([0, 2]), diversity=1.0, pseudo_weight=0.3)
    entropy = 1.5 * math.log(2)  # each row: -(0.5 ln 0.5 + 2 x 0.25 ln 0.25)
    spread = -(2 * 0.375 * math.log(0.375) + 0.25 * math.log(0.25))  # entropy of the mean prediction (0.375, 0.375, 0.25)
    divergence = math.log(3) - spread  # KL(mean || uniform)
    cross_entropy = (-math.log(0.5) - math.log(0.25)) / 2
    assert parts["entropy"].item() == pytest.approx(entropy, abs=1e-4)
    assert parts["diversity"].item() == pytest.approx(divergence, abs=1e-4)
    assert parts["self_label"].item() == pytest.approx(cross_entropy, abs=1e-5)
    assert loss.item() == pytest.approx(entropy + divergence + 0.3 * cross_entropy, abs=1e-4)
    # rows without a self-label (-1) leave the cross-entropy; the other terms keep every row
    loss, parts = shot_loss(logits, torch.tensor([-1, 2]), diversity=0.5, pseudo_weight=1.0)
    assert parts["self_label"].item() == pytest.approx(-math.log(0.25), abs=1e-5)
    assert loss.item() == pytest.approx(entropy + 0.5 * divergence - math.log(0.25), abs=1e-4)
    # against a prior that matches the mean prediction, spreading costs nothing
    _, parts = shot_loss(logits, torch.tensor([0, 2]), prior=torch.tensor([0.375, 0.375, 0.25]))
    assert parts["diversity"].item() == pytest.approx(0.0, abs=1e-4)
    _, parts = shot_loss(logits, torch.tensor([0, 2]), prior=torch.tensor([0.8, 0.1, 0.1]))
    assert parts["diversity"].item() == pytest.approx(0.375 * math.log(0.375 / 0.8) + 0.375 * math.log(3.75) + 0.25 * math.log(2.5), abs=1e-4)


def test_the_estimated_prior_recovers_a_skewed_buckets_class_shares():
    # Two kinds of image: under a uniform prior the model says (0.9, 0.1) for one and (0.1, 0.9) for
    # the other. Drawn from a bucket of 80 % class 0, the first kind is 0.8 x 0.9 + 0.2 x 0.1 = 74 %.
    probs = torch.tensor([[0.9, 0.1]] * 74 + [[0.1, 0.9]] * 26)
    assert torch.allclose(estimate_prior(probs), torch.tensor([0.8, 0.2]), atol=1e-3)
    assert torch.allclose(probs.mean(dim=0), torch.tensor([0.692, 0.308]), atol=1e-3)  # the plain mean is biased to uniform
    # two data-parallel workers holding the same images: counts and sums double alike, the shares stay
    assert torch.allclose(estimate_prior(probs, reduce=lambda t: t * 2), torch.tensor([0.8, 0.2]), atol=1e-3)


def test_centroid_self_labels_follow_the_features_not_the_predictions():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [0.1, 0.9]])
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.4, 0.6, 0.0], [0.2, 0.8, 0.0]])
    labels = centroid_labels(features, probs)
    # image 2 is predicted class 1 but lies among the class-0 images; class 2, predicted for none, gets none
    assert labels.tolist() == [0, 0, 0, 1, 1]
    # summed over two identical "workers", the centroids (and labels) are the same
    assert centroid_labels(features, probs, reduce=lambda t: 2 * t).tolist() == [0, 0, 0, 1, 1]


@pytest.mark.slow
def test_a_shot_epoch_trains_the_backbone_and_leaves_the_classifier(source_model):
    model = build_model(2, SIZE, "none")
    model.load_state_dict(source_model.state_dict())
    fc = model.fc.weight.clone()
    conv = model.Conv2d_1a_3x3.conv.weight.clone()
    optimizer = torch.optim.AdamW(freeze_classifier(model), lr=1e-3)
    target, _ = squares(64, seed=4, shifted=True)
    labels = torch.randint(0, 2, (64,))
    stats = shot_epoch(model, optimizer, batches_of(target, size=16, bad=3), labels, CPU, AdaptConfig(model="", data=(), out=""), IMAGENET_MEAN, IMAGENET_STD)
    assert (stats.images, stats.bad) == (61, 3) and sum(stats.predicted) == 61
    assert torch.equal(model.fc.weight, fc) and not torch.equal(model.Conv2d_1a_3x3.conv.weight, conv)
    assert stats.entropy > 0 and 0 < stats.diversity <= math.log(2) + 1e-6
