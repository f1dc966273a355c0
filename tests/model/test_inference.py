"""The labeling model step: padded to its batch shapes it gives each image the probabilities it
would get alone; compiled, it compiles once per shape, at warm-up, and agrees with eager."""

import pytest
import torch

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD
from cgi2real.imaging.presets import normalize
from cgi2real.model.inference import InferenceStep, bucket_sizes, use_compile
from cgi2real.model.networks import build_model, classifier

CPU = torch.device("cpu")


def pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def step(arch: str, size: int, batch_size: int, compile: bool) -> InferenceStep:
    torch.manual_seed(0)
    model = build_model(3, size, "none", arch=arch)
    torch.nn.init.normal_(classifier(model).weight, std=0.5)  # a random head, not the zeros a new one starts from
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # this one pass sets the statistics: images then get distinct probabilities
    with torch.no_grad():
        model.train()(normalize(pixels(16, size, seed=1), IMAGENET_MEAN, IMAGENET_STD))
    return InferenceStep(model, CPU, IMAGENET_MEAN, IMAGENET_STD, batch_size, compile)


def test_bucket_sizes_and_the_default():
    assert bucket_sizes(256) == (32, 256) and bucket_sizes(32) == (4, 32) and bucket_sizes(4) == (1, 4) and bucket_sizes(1) == (1,)
    assert use_compile(None, torch.device("cuda")) and not use_compile(None, CPU) and use_compile(True, CPU)


def test_padded_batches_give_each_image_its_own_probabilities():
    eager = step("inception_v3", 75, 4, compile=False)
    assert eager.buckets == ()  # eager on CPU: batches run as they come
    images = pixels(9, 75)
    alone = torch.cat([eager(images[i:i + 1]) for i in range(len(images))])
    padded = step("inception_v3", 75, 4, compile=False)
    padded.buckets = bucket_sizes(4)  # as on a GPU: pieces of 4, a short one padded up to its bucket
    for n in (1, 3, 4, 9):
        probs = padded(images[:n])
        assert probs.shape == (n, 3)
        torch.testing.assert_close(probs, alone[:n], atol=1e-5, rtol=1e-4)
    assert ((alone.sum(dim=1) - 1).abs() < 1e-5).all() and (alone.std(dim=0) > 0).all()  # real, distinct rows


@pytest.mark.slow
def test_a_compiled_step_compiles_its_shapes_at_warm_up_and_matches_eager():
    from torch._dynamo.utils import counters

    compiled = step("efficientnet_lite0", 96, 8, compile=True)
    assert compiled.buckets == (1, 8)
    seconds = compiled.warm_up(96)
    assert seconds > 0 and compiled.compiled, "compiling must work on this machine (gcc is there)"
    graphs = counters["stats"]["unique_graphs"]
    images = pixels(11, 96)
    probs = torch.cat([compiled(images[:1]), compiled(images[1:])])  # a single image, then a full piece and a short one
    assert counters["stats"]["unique_graphs"] == graphs, "a batch after warm-up compiled again"
    eager = step("efficientnet_lite0", 96, 8, compile=False)
    torch.testing.assert_close(probs, eager(images), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_a_step_compiled_in_the_background_labels_eager_until_it_is_ready():
    from torch._dynamo.utils import counters

    images = pixels(11, 96)
    eager = step("efficientnet_lite0", 96, 8, compile=False)(images)
    background = step("efficientnet_lite0", 96, 8, compile=True)
    assert background.warm_up(96, background=True) == 0.0  # returns at once: the eager step is warmed, the compiled one builds
    assert not background.ready.is_set()  # compiling takes seconds: this call runs eager, the same function as `eager`
    torch.testing.assert_close(background(images), eager, atol=1e-6, rtol=1e-6)
    assert background.ready.wait(timeout=600) and background.compiled and background.warm_up_seconds > 0
    compiled_graphs = counters["stats"]["unique_graphs"]
    probs = background(images)  # now compiled: a full piece and a short one, both shapes built in the thread
    assert counters["stats"]["unique_graphs"] == compiled_graphs, "the calling thread compiled again"
    torch.testing.assert_close(probs, eager, atol=1e-4, rtol=1e-3)
