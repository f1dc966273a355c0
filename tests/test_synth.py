"""The CGI renderer: determinism, what each class shows, files on disk and S3, and learnability."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from cgi2real.cli import app
from cgi2real.classes import DEFAULT_CLASSES
from cgi2real.presets import decode_image
from cgi2real.synth.dataset import contact_sheet, write_dataset
from cgi2real.synth.scenes import render_scene


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def test_same_seed_same_image_other_seed_other_image():
    a, _, info_a = render_scene("both", 7, 96)
    b, _, info_b = render_scene("both", 7, 96)
    c, _, _ = render_scene("both", 8, 96)
    assert a.size == (96, 96) and np.array_equal(np.asarray(a), np.asarray(b)) and info_a == info_b
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("label", DEFAULT_CLASSES)
def test_each_class_shows_what_its_label_says(label):
    """Over 12 seeds: `both` always has a visible horse and a visible person, the others only their kind."""
    for seed in range(12):
        _, _, info = render_scene(label, seed, 96)
        kinds = {f["kind"] for f in info["figures"]}
        assert kinds == ({"horse", "human"} if label == "both" else {label}), (seed, info)
        assert info["visible"], (seed, info)
        for figure in info["figures"]:
            assert figure["share"] >= {"horse": 0.03, "human": 0.008}[figure["kind"]], (seed, figure)


def test_the_relations_of_both_vary():
    relations = {render_scene("both", seed, 64).info["figures"][0]["relation"] for seed in range(16)}
    assert {"riding", "leading", "beside"} <= relations


def test_write_dataset_layout_and_every_image_decodes_at_its_size(tmp_path):
    assert write_dataset(str(tmp_path), 2, size=80, seed=3) == 6
    for label in DEFAULT_CLASSES:
        names = sorted(os.listdir(tmp_path / label))
        assert names == [f"{label}_000000.jpg", f"{label}_000001.jpg"]
        for name in names:
            assert decode_image((tmp_path / label / name).read_bytes()).size == (80, 80)


def test_contact_sheet_is_a_png_grid(tmp_path):
    contact_sheet(str(tmp_path / "sheet.png"), per_class=2, size=64)
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.format == "PNG" and sheet.size == (2 * 64, 3 * (64 + 18))


@pytest.mark.slow
def test_synth_job_writes_class_folders_and_reruns_only_what_is_missing(ray_cluster, tmp_path):
    out = tmp_path / "cgi"
    output = invoke("synth", "--out", out, "--per-class", 3, "--size", 72, "--seed", 5).output
    assert "wrote 9 images" in output
    for label in DEFAULT_CLASSES:
        assert sorted(os.listdir(out / label)) == [f"{label}_{i:06d}.jpg" for i in range(3)]
    same = render_scene("horse", 5 * 1_000_003 + 1, 72).image
    on_disk = Image.open(io.BytesIO((out / "horse" / "horse_000001.jpg").read_bytes()))
    assert np.abs(np.asarray(on_disk, float) - np.asarray(same, float)).mean() < 3  # only JPEG loss
    os.remove(out / "human" / "human_000002.jpg")
    again = invoke("synth", "--out", out, "--per-class", 3, "--size", 72, "--seed", 5).output
    assert "8 of 9 images already" in again and "wrote 1 images" in again
    refused = invoke("synth", "--out", out, "--per-class", 3, "--size", 96, "--seed", 5, code=2)
    assert "--size 72" in refused.stderr
    assert json.loads((out / "_synth.json").read_text())["size"] == 72
    assert sorted(os.listdir(out / "_masks" / "horse")) == [f"horse_{i:06d}.png" for i in range(3)]
    invoke("synth", "--out", tmp_path / "plain", "--per-class", 1, "--size", 64, "--no-masks")
    assert not (tmp_path / "plain" / "_masks").exists() and len(os.listdir(tmp_path / "plain" / "both")) == 1


@pytest.mark.slow
def test_synth_job_writes_to_s3(ray_cluster, s3_client, bucket, s3_endpoint):
    invoke("synth", "--out", f"s3://{bucket}/cgi", "--per-class", 2, "--size", 64, "--classes", "horse,both", "--s3-endpoint", s3_endpoint)
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="cgi/")["Contents"])
    assert [k for k in keys if k.endswith(".jpg")] == ["cgi/both/both_000000.jpg", "cgi/both/both_000001.jpg", "cgi/horse/horse_000000.jpg", "cgi/horse/horse_000001.jpg"]
    assert [k for k in keys if k.endswith(".png")] == ["cgi/_masks/both/both_000000.png", "cgi/_masks/both/both_000001.png", "cgi/_masks/horse/horse_000000.png", "cgi/_masks/horse/horse_000001.png"]


def test_unknown_class_is_refused():
    assert "cannot draw zebra" in invoke("synth", "--out", "/tmp/x", "--per-class", 1, "--classes", "horse,zebra", code=2).stderr


def _render_set(per_class: int, first_seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for y, label in enumerate(DEFAULT_CLASSES):
        for i in range(per_class):
            images.append(np.asarray(render_scene(label, first_seed + i, size).image))
            labels.append(y)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255, torch.tensor(labels)


@pytest.mark.slow
def test_a_small_cnn_learns_the_classes_from_renders():
    """Train a 4-block CNN on 450 renders (64 px), test on 150 others: it must beat chance (1/3) widely.

    Asserted: accuracy >= 0.5. Measured on the dev VM with seeds 0, 1, 2: 0.69, 0.66, 0.68 (train
    accuracy about 0.78). With 150 test images the standard error is about 0.04: 0.5 sits four of
    them below what this recipe reaches, and four above chance.
    """
    torch.manual_seed(0)
    x_train, y_train = _render_set(150, 0, 64)
    x_test, y_test = _render_set(50, 100_000, 64)

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 3))
    epochs, batch = 16, 32
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * -(-len(x_train) // batch))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(batch):
            images = x_train[idx]
            images = torch.where((torch.rand(len(idx)) < 0.5)[:, None, None, None], images.flip(3), images)
            loss = nn.functional.cross_entropy(model(images), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.5, f"test accuracy {accuracy:.3f}"
