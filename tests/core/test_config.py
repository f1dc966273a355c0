"""Run configurations: the arch's defaults, and one option check with one message shape."""

import re
from dataclasses import MISSING, fields, replace

import pytest

from cgi2real.core.archs import ARCHS, get_arch
from cgi2real.core.classes import parse_classes
from cgi2real.core.config import (
    DECODES,
    GEOMETRIES,
    PROBABILITY,
    AdaptConfig,
    EvalConfig,
    LabelConfig,
    ReviewConfig,
    SynthConfig,
    TrainConfig,
    at_least,
    between,
    choose,
)
from cgi2real.core.errors import InputError


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


def test_choose_names_the_flag_the_value_and_what_is_allowed():
    choose("--geometry", "pad", GEOMETRIES)
    choose("--decode", None, DECODES, optional=True)
    for value, allowed, message in [
        ("fit", GEOMETRIES, "--x 'fit': expected one of crop, pad, squash"),
        (0, at_least(1), "--x 0: expected >= 1"),
        (1.5, PROBABILITY, "--x 1.5: expected between 0 and 1"),
        (0.0, between(0, 1, low_open=True), "--x 0: expected a number in (0, 1]"),
        (1.0, between(0, 1, high_open=True), "--x 1: expected a number in [0, 1)"),
        (float("nan"), at_least(0), "--x nan: expected >= 0"),
        (None, DECODES, "--x None: expected one of cpu, device"),
        (True, at_least(0), "--x True: expected >= 0"),  # a flag is not a number
    ]:
        with pytest.raises(InputError) as refused:
            choose("--x", value, allowed)
        assert str(refused.value) == message


BAD_SETTINGS = [  # (config, flag as the message names it): one out-of-range value each
    (TrainConfig(data=("x",), out="y", batch_size=0), "--batch-size 0"),
    (TrainConfig(data=("x",), out="y", workers=0), "--workers 0"),
    (TrainConfig(data=("x",), out="y", max_failures=-2), "--max-failures -2"),
    (TrainConfig(data=("x",), out="y", lr_finetune=-1.0), "--lr-finetune -1"),
    (TrainConfig(data=("x",), out="y", epochs_head=-1), "--epochs-head -1"),
    (TrainConfig(data=("x",), out="y", epochs_head=0, epochs_finetune=0), "at least one epoch"),
    (TrainConfig(data=("x",), out="y", val_fraction=1.0), "--val-fraction 1"),
    (TrainConfig(data=("x",), out="y", paste_prob=2.0), "--paste-prob 2"),
    (TrainConfig(data=("x",), out="y", label_smoothing=1.0), "--label-smoothing 1"),
    (TrainConfig(data=("x",), out="y", decode="gpu"), "--decode 'gpu'"),
    (TrainConfig(data=("x",), out="y", augment="strong"), "--augment 'strong'"),
    (AdaptConfig(model="m", data=("x",), out="y", batch_size=1), "--batch-size 1"),
    (AdaptConfig(model="m", data=("x",), out="y", method="tent"), "--method 'tent'"),
    (AdaptConfig(model="m", data=("x",), out="y", lr=0.0), "--lr 0"),
    (AdaptConfig(model="m", data=("x",), out="y", bn_mix=1.5), "--bn-mix 1.5"),
    (EvalConfig(model="m", data=("x",), batch_size=0), "--batch-size 0"),
    (EvalConfig(model="m", data=("x",), batch_size=-5), "--batch-size -5"),
    (EvalConfig(model="m", data=("x",), abstain_below=0.0), "--abstain-below 0"),
    (LabelConfig(source="s", model="m", out="o", actors=0), "--actors 0"),
    (LabelConfig(source="s", model="m", out="o", abstain_below=1.5), "--abstain-below 1.5"),
    (ReviewConfig(table="t", out="o", lowest=-1), "--lowest -1"),
    (SynthConfig(out="o", per_class=10, size=16), "--size 16"),
    (SynthConfig(out="o", per_class=10, scenes="studio"), "--scenes 'studio'"),
]


@pytest.mark.parametrize("cfg, flag", BAD_SETTINGS, ids=[flag for _, flag in BAD_SETTINGS])
def test_each_config_refuses_an_out_of_range_setting_with_its_flag_and_value(cfg, flag):
    with pytest.raises(InputError, match=re.escape(flag)):
        cfg.check()
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING and getattr(cfg, f.name) != f.default}
    replace(cfg, **defaults).check()  # the same config with its settings at their defaults passes (arch defaults refilled)


def test_weights_none_trains_every_block_by_default():
    for arch in ARCHS.values():
        scratch = TrainConfig(data=("d",), out="o", weights="none", arch=arch.name)
        assert (scratch.epochs_head, scratch.unfreeze_from) == (0, arch.blocks[0])
        assert scratch.epochs == arch.epochs_head + arch.epochs_finetune and scratch.lr_finetune == arch.lr_head
        scratch.check()
    kept = TrainConfig(data=("d",), out="o", weights="none", epochs_head=2, unfreeze_from="Mixed_6a")  # what is given stays
    assert (kept.epochs_head, kept.unfreeze_from) == (2, "Mixed_6a")
    pretrained = TrainConfig(data=("d",), out="o", weights="imagenet")
    assert (pretrained.epochs_head, pretrained.unfreeze_from) == (ARCHS["inception_v3"].epochs_head, "Mixed_6a")


def test_the_renderer_takes_one_class():
    SynthConfig(out="o", per_class=1, classes=parse_classes("horse", least=1)).check()
    with pytest.raises(InputError, match="--classes 'horse': expected at least 2"):
        parse_classes("horse")
