"""Model packages: round trips (local and S3), geometry, and the refusal of pickles, tampered, incomplete, misshapen and unknown-arch packages."""

import json
import os

import pytest
import torch

from cgi2real.core.errors import InputError
from cgi2real.formats.package import CONFIG_FILE, WEIGHTS_FILE
from cgi2real.model.networks import build_model, load_model_package, package_config, save_model_package
from tests.model.test_networks import CLASSES, LITE, save


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


def test_a_package_of_an_unknown_arch_is_refused_before_any_work(tmp_path):
    model = build_model(3, 96, "none", arch=LITE.name)
    save_model_package(model.state_dict(), package_config(model, CLASSES, 96, "crop"), str(tmp_path / "pkg"))
    config = json.loads((tmp_path / "pkg" / CONFIG_FILE).read_text())
    (tmp_path / "pkg" / CONFIG_FILE).write_text(json.dumps({**config, "arch": "vit_b_16"}))
    with pytest.raises(InputError, match="arch 'vit_b_16'; this cgi2real knows inception_v3, efficientnet_lite0"):
        load_model_package(str(tmp_path / "pkg"))
