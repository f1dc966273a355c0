"""Model construction, freezing per stage, and model packages (local and S3)."""

import json
import os

import pytest
import torch

from cgi2real.errors import InputError
from cgi2real.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BLOCKS,
    build_model,
    initial_model,
    read_starting_weights,
    load_model_package,
    package_config,
    save_model_package,
    set_train_mode,
    set_trainable,
)

CLASSES = ["both", "horse", "human"]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(3, 96, "none")


def test_aux_head_only_at_full_size():
    assert build_model(3, 96).AuxLogits is None
    assert build_model(3, 299).AuxLogits is not None
    with pytest.raises(InputError, match="at least 75"):
        build_model(3, 64)


def test_stage_parameter_counts(small_model):
    model = small_model
    head = set_trainable(model, "head")
    assert head == count(model.fc) == 2048 * 3 + 3
    finetune = set_trainable(model, "finetune", "Mixed_6a")
    names = [name for name, _ in build_model(3, 299).named_children()]
    assert tuple(names) == BLOCKS  # the freezing order is torchvision's forward order
    expected = sum(count(getattr(model, n)) for n in names[names.index("Mixed_6a"):] if getattr(model, n) is not None)
    assert finetune == expected
    assert not any(p.requires_grad for p in model.Mixed_5d.parameters())
    assert all(p.requires_grad for p in model.Mixed_7c.parameters())
    assert set_trainable(model, "finetune", "Conv2d_1a_3x3") == count(model)
    with pytest.raises(InputError, match="Mixed_9z"):
        set_trainable(model, "finetune", "Mixed_9z")


def test_aux_head_is_a_head_and_trains_in_finetune_from_mixed_6a():
    model = build_model(3, 299, "none")
    assert set_trainable(model, "head") == count(model.fc) + count(model.AuxLogits.fc)
    set_trainable(model, "finetune", "Mixed_6a")
    assert all(p.requires_grad for p in model.AuxLogits.parameters())


def test_frozen_batchnorm_stays_in_eval_mode(small_model):
    model = small_model
    set_trainable(model, "finetune", "Mixed_7a")
    set_train_mode(model)
    assert model.Conv2d_1a_3x3.bn.training is False
    assert model.Mixed_7c.branch1x1.bn.training is True
    before = model.Conv2d_1a_3x3.bn.running_mean.clone()
    model(torch.randn(2, 3, 96, 96))
    assert torch.equal(before, model.Conv2d_1a_3x3.bn.running_mean)


def save(model, uri, classes=CLASSES, size=96, **kwargs):
    return save_model_package(model.state_dict(), package_config(model, classes, size, "crop"), uri, **kwargs)


def test_package_round_trip_gives_same_logits(small_model, tmp_path):
    model = small_model.eval()
    x = torch.randn(2, 3, 96, 96)
    config = save(model, str(tmp_path / "pkg"))
    package = load_model_package(str(tmp_path / "pkg"))
    assert package.classes == CLASSES and package.image_size == 96
    assert package.model_id == config["weights_sha256"][:16]
    with torch.no_grad():
        assert torch.equal(model(x), package.model(x))
    on_disk = json.loads((tmp_path / "pkg" / CONFIG_FILE).read_text())
    for key in ("arch", "classes", "image_size", "geometry", "mean", "std", "created_at", "cgi2real_version", "format_version"):
        assert key in on_disk


def test_a_package_keeps_its_geometry_and_old_packages_center_crop(small_model, tmp_path):
    config = save_model_package(small_model.state_dict(), package_config(small_model, CLASSES, 96, "pad"), str(tmp_path / "pad"))
    package = load_model_package(str(tmp_path / "pad"))
    assert config["format_version"] == 2 and package.geometry == "pad" and package.eval_preset().geometry == "pad"
    old = {key: value for key, value in config.items() if key != "geometry"} | {"format_version": 1}  # as version 1 wrote it
    (tmp_path / "pad" / CONFIG_FILE).write_text(json.dumps(old))
    assert load_model_package(str(tmp_path / "pad")).eval_preset().geometry == "crop"
    (tmp_path / "pad" / CONFIG_FILE).write_text(json.dumps({**config, "geometry": "fisheye"}))
    with pytest.raises(InputError, match="geometry 'fisheye'; this cgi2real knows crop, pad, squash"):
        load_model_package(str(tmp_path / "pad"))


def test_package_round_trip_on_s3(small_model, s3_endpoint, bucket):
    uri = f"s3://{bucket}/models/m1"
    save(small_model, uri, s3_endpoint=s3_endpoint)
    package = load_model_package(uri, s3_endpoint)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(small_model.eval()(x), package.model(x))


def test_refuses_pickled_tampered_and_incomplete_packages(small_model, tmp_path):
    good = tmp_path / "good"
    save(small_model, str(good))

    tampered = tmp_path / "tampered"
    save(small_model, str(tampered))
    data = bytearray((tampered / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (tampered / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match the SHA-256"):
        load_model_package(str(tampered))

    pickled = tmp_path / "pickled"  # a torch.save file whose hash was updated to match
    os.makedirs(pickled)
    torch.save(small_model.state_dict(), pickled / WEIGHTS_FILE)
    import hashlib

    config = json.loads((good / CONFIG_FILE).read_text())
    config["weights_sha256"] = hashlib.sha256((pickled / WEIGHTS_FILE).read_bytes()).hexdigest()
    (pickled / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match="not a safetensors file"):
        load_model_package(str(pickled))

    (good / WEIGHTS_FILE).rename(tmp_path / "moved")
    with pytest.raises(InputError, match=f"no {WEIGHTS_FILE}"):
        load_model_package(str(good))
    with pytest.raises(InputError, match="not a model package"):
        load_model_package(str(tmp_path / "nowhere"))


def test_refuses_weights_of_another_shape(small_model, tmp_path):
    four_class = build_model(4, 96)
    save(four_class, str(tmp_path / "pkg"))
    config = json.loads((tmp_path / "pkg" / CONFIG_FILE).read_text())
    config["classes"] = CLASSES  # says 3 classes, holds a 4-class head
    (tmp_path / "pkg" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"'fc.weight' has shape \[4, 2048\], expected \[3, 2048\]"):
        load_model_package(str(tmp_path / "pkg"))
    with pytest.raises(InputError, match="has classes"):
        load_model_package(str(tmp_path / "pkg"), classes=["a", "b"])


def test_continue_from_package_keeps_backbone_and_head(small_model, tmp_path):
    save(small_model, str(tmp_path / "pkg"))
    config, data = read_starting_weights(str(tmp_path / "pkg"))
    same = initial_model(str(tmp_path / "pkg"), CLASSES, 96, data, config)
    assert torch.equal(same.fc.weight, small_model.fc.weight)
    other = initial_model(str(tmp_path / "pkg"), ["cat", "dog"], 96, data, config)
    assert other.fc.out_features == 2
    assert torch.equal(other.Mixed_7c.branch1x1.conv.weight, small_model.Mixed_7c.branch1x1.conv.weight)


def test_imagenet_weights_offline_fail_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: no download
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(InputError) as error:
        build_model(3, 299, "imagenet")
    message = str(error.value)
    assert "TORCH_HOME" in message and "--weights none|PACKAGE" in message and "\n" not in message


def test_random_init_starts_from_uniform_predictions():
    """From scratch the classifiers start at zero: loss ln K, not torchvision's std-0.1 logits of +-10."""
    model = build_model(3, 299, "none").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 299, 299))
    assert torch.equal(logits, torch.zeros(2, 3))
    assert not model.AuxLogits.fc.weight.any() and model.Conv2d_1a_3x3.conv.weight.std() > 0.05
